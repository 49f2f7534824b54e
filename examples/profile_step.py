"""Profile one optimizer step at 10 and at 1000 tensors: the Python-level work must not grow
with the tensor count (issue 5). Prints cProfile's call count per step and its top entries.

    python examples/profile_step.py
"""

import cProfile
import io
import pstats
import time

import numpy as np

import fusedoptim as fo


def profile(count, size=100, steps=100):
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(size).astype(np.float32) for _ in range(count)]
    grads = [rng.standard_normal(size).astype(np.float32) for _ in range(count)]
    opt = fo.AdamW(params, lr=1e-3)
    opt.step(grads)                         # state and tables are built on the first step
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        opt.step(grads)
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("tottime").print_stats(6)
    t0 = time.perf_counter()
    for _ in range(20 * steps):
        opt.step(grads)
    per_step = (time.perf_counter() - t0) / (20 * steps)
    print(f"== {count} tensors of {size} float32: {stats.total_calls / steps:.0f} Python-level "
          f"calls per step; {per_step * 1e6:.1f} us per step, kernel included")
    table = out.getvalue().splitlines()
    start = next(i for i, line in enumerate(table) if line.lstrip().startswith("ncalls"))
    print("\n".join(line for line in table[start:] if line.strip()))
    print()


if __name__ == "__main__":
    fo.set_num_threads(1)
    for n in (10, 1000):
        profile(n)
