"""ThreadSanitizer's positive control: a race it must report (run by hand, not by pytest).

Two Python threads run the functional SGD over the *same* param array at once. That is the
caller's race (fusedoptim._exclusive: the functional entries keep no state to guard, and two
calls writing the same arrays race as two NumPy in-place operations would), so a TSan build
must report a data race in the SGD kernel. If it reports nothing, the tool is blind (say, the
runtime is not preloaded, or the driver's happens-before annotations are too broad) and a
clean TSan run of the tests proves nothing. Exits 0 whatever happens; read TSan's log.
"""

import threading

import numpy as np

import fusedoptim as fo
from fusedoptim import functional as F

fo.set_num_threads(1)        # the race is between the two Python threads, not OpenMP's
param = np.zeros(100_000, np.float32)
grad = np.ones_like(param)
start = threading.Barrier(2)


def step_many():
    start.wait()
    for _ in range(200):
        F.sgd([param], [grad], None, lr=0.1)


threads = [threading.Thread(target=step_many) for _ in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("param[0] after 2 x 200 racing steps of -0.1:", param[0])
