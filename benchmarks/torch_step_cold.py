"""Why fusedoptim.torch's AdamW step takes longer inside a training loop than on its own.

    OMP_WAIT_POLICY=passive python benchmarks/torch_step_cold.py [THREADS]

On the model of `fusedoptim bench --torch`'s end-to-end row (a 2-layer TransformerEncoder,
2.63M params, 74 MB of params, grads and AdamW state), times `opt.step()` alone for
fot.AdamW and torch.optim.AdamW(fused=True), 30 steps each (median and best), after:

* nothing (the previous step's working set partly still in cache),
* reading 64 MB (the caches evicted, clean),
* writing 64 MB (the caches full of dirty lines),
* a forward and backward pass (what the training loop does).

If the last row is close to the evicted ones, the in-loop step is a cold stream of its bytes,
and its floor is the memory bandwidth of the host, not the step. For that floor, it then times
fo.AdamW over one NumPy array of the model's size after the caches are evicted, and over 1e8
elements (28 bytes an element: p, g, m, v read, p, m, v written). README (the torch drop-in)
quotes one run.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import numpy as np
import torch

import fusedoptim as fo
import fusedoptim.torch as fot
from fusedoptim.torch._bench import _Encoder

STEPS = 30


def main(threads: int) -> None:
    fo.set_num_threads(threads)
    torch.set_num_threads(threads)
    junk = np.ones(64 << 20 >> 2, np.float32)          # 64 MB, twice the L3 cache
    factories: dict[str, Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]] = {
        "fot.AdamW": lambda ps: fot.AdamW(ps, lr=1e-4),
        "torch AdamW(fused=True)": lambda ps: torch.optim.AdamW(ps, lr=1e-4, fused=True)}
    print(f"{threads} thread(s); opt.step() alone, {STEPS} steps: median (best) ms")
    for name, factory in factories.items():
        torch.manual_seed(0)
        model = _Encoder()
        opt = factory(list(model.parameters()))
        x, y = torch.randn(32, 8, 256), torch.randn(32, 1)

        def forward_backward() -> None:
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.mse_loss(model(x), y).backward()

        def read_64mb() -> None:
            float(junk.sum())

        def write_64mb() -> None:
            junk.__iadd__(1.0)

        forward_backward()
        opt.step()
        before: dict[str, Callable[[], None]] = {
            "repeated": lambda: None, "after reading 64 MB": read_64mb,
            "after writing 64 MB": write_64mb, "after forward+backward": forward_backward}
        for label, prepare in before.items():
            times = []
            for _ in range(STEPS):
                prepare()
                t0 = time.perf_counter()
                opt.step()
                times.append(time.perf_counter() - t0)
            print(f"  {name:<24} {label:<24} {np.median(times) * 1e3:7.3f} "
                  f"({min(times) * 1e3:.3f})", flush=True)


def cold_array_rows(threads: int) -> None:
    fo.set_num_threads(threads)
    junk = np.ones(64 << 20 >> 2, np.float32)
    print(f"{threads} thread(s); fo.AdamW over one float32 array, caches evicted first: "
          "median ms, GB/s at 28 B an element")
    for n, repeat in ((2_630_401, STEPS), (100_000_000, 5)):
        p = np.full(n, 0.01, np.float32)
        g = np.full(n, 0.001, np.float32)
        opt = fo.AdamW([p], lr=1e-4)
        opt.step([g])
        times = []
        for _ in range(repeat):
            float(junk.sum())
            t0 = time.perf_counter()
            opt.step([g])
            times.append(time.perf_counter() - t0)
        med = float(np.median(times))
        print(f"  n = {n:>11,}  {med * 1e3:8.3f}  {28 * n / med / 1e9:5.1f} GB/s", flush=True)
        del p, g, opt


if __name__ == "__main__":
    nt = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    main(nt)
    cold_array_rows(nt)
