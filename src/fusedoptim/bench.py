"""`fusedoptim bench`: fused kernels vs the NumPy reference vs torch, in one run, on this machine.

For every case, size and thread count it times, side by side:
  fused      fo.<Optimizer>.step on one tensor
  reference  fo.reference.<Optimizer>.step (plain NumPy)
  torch      torch.optim.<Optimizer> (fused=True where torch has a fused CPU kernel, else
             the faster of foreach and for-loop), when torch is importable
  roofline   a trivial kernel with the same read/write pattern (DESIGN.md), same flags
and reports G elements/s, the speed-ups, and the fused step as a % of the roofline.
Timings are the best of several repeats (these machines are shared and noisy), and only
ratios from the same run are meaningful.

`fusedoptim bench --many-tensors` times one AdamW step over many small tensors instead
(default 1000 x 1000 float32): as separate arrays, as one flat array, through a FlatParams
arena, straight through the kernel's Plan, and with torch, interleaved in one run.

`fusedoptim bench --utilities` times the gradient utilities instead: clip_grad_norm_ and
global_norm over 1000 float32 tensors of 1000 elements against torch.nn.utils (foreach=True),
clip_grad_norm_/all_finite/clip_grad_value_ on one buffer per --sizes (default 1e8) as a % of
read-only and read-write rooflines, and what skip_nonfinite adds to a 1e6 AdamW step.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn, TextIO, TypeVar

import numpy as np

import fusedoptim as fo
from . import _kernels
from ._blas import blas_threads
from ._precision import BFLOAT16 as BF16, MASTER
from .flat import aligned_zeros

if TYPE_CHECKING:
    from numpy.typing import DTypeLike

    from ._typing import FloatArray

    _T = TypeVar("_T")

# torch is optional and imported at run time only (_optional_torch): its module and objects
# are typed Any here. A timing row (a dict of labels, counts and seconds) is dict[str, Any].


@dataclass
class BenchCase:
    """One optimizer configuration to benchmark."""
    name: str                   # label in the table
    cls: str                    # class name in fusedoptim / fusedoptim.reference
    kwargs: dict[str, Any]
    rw_buffers: int             # buffers read and written per element (param + state)
    torch_cls: str | None = None    # torch.optim class name, None when torch has none
    torch_kwargs: dict[str, Any] = field(default_factory=dict)
    torch_fused: bool = False   # torch has a fused CPU kernel for it
    # Two-pass optimizers (LAMB, LARS) move more data than one touch_rw pass: the roofline
    # kernels run after touch_rw<rw_buffers> on the same buffers, in the same call.
    extra_roofline: tuple[str, ...] = ()
    # Key in bench_external.EXTERNAL: the fastest outside implementation of an optimizer that
    # torch.optim lacks (its official release, or Optax under jax.jit), for `--external`.
    external: str | None = None

    def transfers(self) -> int:
        """Memory transfers per element: each rw buffer read + written, the grad read, plus
        the extra roofline passes'."""
        return 2 * self.rw_buffers + 1 + sum(_TOUCH_TRANSFERS[k] for k in self.extra_roofline)


# Transfers per element of the roofline kernels that can serve as extra passes.
_TOUCH_TRANSFERS = {"touch_rw1": 3, "touch_r1": 1, "touch_r2": 2, "touch_w1": 2}


# The declarative table: add an optimizer here and it appears in `fusedoptim bench` and in
# the pytest-benchmark suite (benchmarks/).
BENCH_CASES = [
    BenchCase("AdamW", "AdamW", dict(lr=1e-3, weight_decay=1e-2), 3, "AdamW",
              dict(lr=1e-3, weight_decay=1e-2), torch_fused=True),
    BenchCase("Adam(amsgrad)", "Adam", dict(lr=1e-3, amsgrad=True), 4, "Adam",
              dict(lr=1e-3, amsgrad=True), torch_fused=True),
    # rw_buffers = param + state buffers (each read and written); torch has no fused kernel
    # for these, so they are compared with its faster of foreach and for-loop.
    BenchCase("Adamax", "Adamax", dict(lr=2e-3), 3, "Adamax", dict(lr=2e-3)),
    BenchCase("NAdam", "NAdam", dict(lr=2e-3), 3, "NAdam", dict(lr=2e-3)),
    BenchCase("RAdam", "RAdam", dict(lr=1e-3), 3, "RAdam", dict(lr=1e-3)),
    BenchCase("Lion", "Lion", dict(lr=1e-4, weight_decay=0.1), 2),
    BenchCase("SignSGD(mom)", "SignSGD", dict(lr=1e-4, momentum=0.9, dampening=0.9), 2),
    BenchCase("Rprop", "Rprop", dict(lr=1e-2), 3, "Rprop", dict(lr=1e-2)),
    # t0=0: the averaging branch (ax read and written) from the third step on.
    BenchCase("ASGD", "ASGD", dict(lr=1e-2, t0=0.0), 2, "ASGD", dict(lr=1e-2, t0=0.0)),
    # torch has fused CPU kernels for SGD and Adagrad (the targets compare with them).
    # Plain SGD keeps no state: it touches p and g only (rw_buffers 1).
    BenchCase("SGD", "SGD", dict(lr=1e-3), 1, "SGD", dict(lr=1e-3), torch_fused=True),
    BenchCase("SGD(momentum)", "SGD", dict(lr=1e-3, momentum=0.9), 2, "SGD",
              dict(lr=1e-3, momentum=0.9), torch_fused=True),
    BenchCase("SGD(nesterov)", "SGD", dict(lr=1e-3, momentum=0.9, nesterov=True,
                                           weight_decay=1e-4), 2, "SGD",
              dict(lr=1e-3, momentum=0.9, nesterov=True, weight_decay=1e-4), torch_fused=True),
    BenchCase("Adagrad", "Adagrad", dict(lr=1e-2), 2, "Adagrad", dict(lr=1e-2),
              torch_fused=True),
    BenchCase("RMSprop", "RMSprop", dict(lr=1e-2), 2, "RMSprop", dict(lr=1e-2)),
    # Not centered: the bench repeats one gradient, and then the centered variance
    # v - a^2 = alpha^t (1 - alpha^t) g^2 decays into rounding noise and NaN (step ~1200 at
    # alpha=0.99, torch's too), so a centered row would time a degenerate state.
    BenchCase("RMSprop(mom)", "RMSprop", dict(lr=1e-2, momentum=0.9), 3, "RMSprop",
              dict(lr=1e-2, momentum=0.9)),
    BenchCase("Adadelta", "Adadelta", dict(), 3, "Adadelta", dict()),
    # Issue 13: optimizers torch.optim lacks, timed against their outside implementations
    # (`bench --external`). AdEMAMix moves p, m1, m2, nu in and out and g in (9 transfers);
    # ADOPT p, m, v and g (7).
    BenchCase("AdEMAMix", "AdEMAMix", dict(lr=1e-3, weight_decay=1e-2), 4,
              external="bnb_ademamix"),
    BenchCase("ADOPT", "ADOPT", dict(lr=1e-3), 3, external="optax_adopt"),
    # Two passes, no torch equivalent. LAMB: pass 1 moves p, g, m, v in and m, v out, pass 2
    # p, m, v in and p out (10 transfers = touch_rw3 + touch_rw1). LARS: pass 1 reads p and
    # g, pass 2 is SGD with momentum (7 = touch_r2 + touch_rw2).
    BenchCase("LAMB", "LAMB", dict(lr=1e-3, weight_decay=1e-2), 3,
              extra_roofline=("touch_rw1",)),
    BenchCase("LARS", "LARS", dict(lr=1.0, momentum=0.9, weight_decay=1e-4), 2,
              extra_roofline=("touch_r2",)),
    # Schedule-Free (issue 13): AdamW reads p, g, z, v and writes p, z, v; SGD reads p, g, z
    # and writes p, z. Timed against the schedulefree package's foreach path (--external).
    BenchCase("ScheduleFreeAdamW", "ScheduleFreeAdamW", dict(lr=2.5e-3, weight_decay=1e-2), 3,
              external="schedulefree_adamw"),
    BenchCase("ScheduleFreeSGD", "ScheduleFreeSGD", dict(lr=1.0, weight_decay=1e-4), 2,
              external="schedulefree_sgd"),
    # MADGRAD reads and writes p, grad_sum_sq and s, reads g and x0 (8 transfers =
    # touch_rw3 + touch_r1); no torch.optim class, its official release is the `madgrad`
    # package (no foreach path).
    BenchCase("MADGRAD", "MADGRAD", dict(lr=1e-2), 3, extra_roofline=("touch_r1",),
              external="madgrad"),
    # Yogi: p, m, v read and written, g read (7 transfers), in one pass.
    BenchCase("Yogi", "Yogi", dict(lr=1e-2), 3, external="optax.yogi"),
    # Prodigy's two passes: the first reads p, g, m, v, s, p0 and writes m, v, s (9), the
    # second reads p, m, v and writes p (4): 13 transfers = touch_rw4 + g, then 2 x touch_r2.
    BenchCase("Prodigy", "Prodigy", dict(lr=1.0, weight_decay=1e-2), 4,
              extra_roofline=("touch_r2", "touch_r2"), external="prodigyopt"),
    # Issue 13, no torch class. Adan reads g and reads and writes p, m, n, d and the previous
    # grad: 11 transfers, timed as touch_rw4 + touch_w1 (a one-loop touch_rw5 over six buffers
    # is not vectorised by gcc: more alias pairs than it versions a loop for, see design.md);
    # its outside implementation is optax.adan under jax.jit (the official release is not on
    # PyPI). AdaBelief (rectified, past N_t = 5): p, m, s; outside, adabelief-pytorch.
    BenchCase("Adan", "Adan", dict(lr=1e-3, weight_decay=2e-2), 4, external="adan",
              extra_roofline=("touch_w1",)),
    BenchCase("AdaBelief", "AdaBelief", dict(lr=1e-3, weight_decay=1e-2), 3,
              external="adabelief"),
]


def _timeit(fn: Callable[[], object], min_time: float, repeat: int) -> float:
    """Best seconds per call over `repeat` batches of at least `min_time` seconds each."""
    fn()
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t0
        if dt >= min_time / 4 or n > 1 << 20:
            break
        n *= 4
    n = max(1, int(n * (min_time / max(dt, 1e-9))))
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def _data(n: int, dtype: DTypeLike, seed: int = 0) -> tuple[FloatArray, FloatArray]:
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(n).astype(dtype)
    g = (rng.standard_normal(n) * 1e-3).astype(dtype)
    return p, g


def fused_step_fn(case: BenchCase, n: int, dtype: DTypeLike,
                  reference: bool = False) -> Callable[[], object]:
    p, g = _data(n, dtype)
    module = fo.reference if reference else fo
    opt = getattr(module, case.cls)([p], **case.kwargs)
    grads = [g]
    opt.step(grads)          # allocate state outside the timing
    return lambda: opt.step(grads)


def roofline_fn(case: BenchCase, n: int, dtype: DTypeLike) -> Callable[[], object]:
    """The same read/write pattern as the optimizer, doing only x += g."""
    p, g = _data(n, dtype)
    state: list[list[FloatArray | None] | None] = [
        [np.zeros_like(p) for _ in range(case.rw_buffers - 1)]]
    plan = _kernels.Plan([p], state, case.rw_buffers - 1, 0, ["g"])
    plan.bind([g])
    passes = [_touch_pass(plan, f"touch_rw{case.rw_buffers}")]
    passes += [_touch_pass(plan, name) for name in case.extra_roofline]
    if len(passes) == 1:
        return passes[0]
    return lambda: [run() for run in passes]


def _touch_pass(plan: _kernels.Plan, name: str) -> Callable[[], object]:
    """One roofline pass over a bound plan: a chunk kernel or a read-only reduction."""
    if name in _kernels.REDUCE_IDS:
        rid = _kernels.REDUCE_IDS[name]
        return lambda: plan.reduce(rid)
    kid = _kernels.KERNEL_IDS[name]
    return lambda: plan.run(kid)


def torch_step_fn(case: BenchCase, n: int, dtype: DTypeLike,
                  torch: Any) -> tuple[Callable[[], object] | None, str | None]:
    """torch's fastest CPU path for this optimizer, or None."""
    if case.torch_cls is None:
        return None, None
    p, g = _data(n, dtype)
    tp = torch.from_numpy(p)
    tp.grad = torch.from_numpy(g)
    cls = getattr(torch.optim, case.torch_cls)
    candidates = [("fused", dict(fused=True))] if case.torch_fused else []
    candidates += [("foreach", dict(foreach=True)), ("for-loop", dict(foreach=False))]
    best: tuple[Callable[[], object] | None, str | None, float] = (None, None, math.inf)
    for label, extra in candidates:
        try:
            opt = cls([tp], **case.torch_kwargs, **extra)
            opt.step()
        except (RuntimeError, TypeError, ValueError):
            continue
        fn = opt.step
        if case.torch_fused and label == "fused":
            return fn, label       # torch's own best path; the target compares with it
        t = _timeit(fn, 0.05, 2)
        if t < best[2]:
            best = (fn, label, t)
    return best[0], best[1]


# -- many small tensors -------------------------------------------------------------------

# AdamW, as torch's defaults otherwise
MANY_TENSORS_KW: dict[str, Any] = dict(lr=1e-3, weight_decay=1e-2)


def many_tensor_fns(count: int, size: int, dtype: DTypeLike = np.float32,
                    torch: Any = None) -> dict[str, Callable[[], object]]:
    """One AdamW step over `count` tensors of `size` elements, laid out several ways, each
    with its own buffers and its state already created: {label: step function}."""
    from .optim.adam import adam_scalars, check_adam
    rng = np.random.default_rng(0)
    ps = [rng.standard_normal(size).astype(dtype) for _ in range(count)]
    gs = [(rng.standard_normal(size) * 1e-3).astype(dtype) for _ in range(count)]
    fns: dict[str, Callable[[], object]] = {}

    separate = fo.AdamW([p.copy() for p in ps], **MANY_TENSORS_KW)
    separate.step(gs)
    fns["fo, separate tensors"] = lambda: separate.step(gs)

    p1, g1 = np.concatenate(ps), np.concatenate(gs)
    one = fo.AdamW([p1], **MANY_TENSORS_KW)
    one.step([g1])
    fns["fo, one flat tensor"] = lambda: one.step([g1])

    arena = fo.FlatParams.from_arrays(ps)
    arena.flat_grad[:] = g1
    arena_opt = fo.AdamW(arena, **MANY_TENSORS_KW)
    arena_opt.step()
    fns["fo, FlatParams arena: step()"] = arena_opt.step

    # The floor for the arena: the kernel over its flat buffers through the driver, with
    # only what a step must do (count the step, fill the scalars, run).
    direct = fo.FlatParams.from_arrays(ps)
    direct.flat_grad[:] = g1
    # State buffers aligned like the arena's own (a 64-byte phase unlike the param's costs
    # the kernel ~25%: split vector loads and stores).
    m, v = aligned_zeros(direct.size, dtype), aligned_zeros(direct.size, dtype)
    plan = _kernels.Plan([direct.flat], [[m, v, None]], 3, len(_kernels.SCALARS["adam"]),
                         ["grad"], required=[0, 1])
    plan.bind([direct.flat_grad])
    hyper = check_adam(MANY_TENSORS_KW["lr"], 0.9, 0.999, 1e-8,
                       MANY_TENSORS_KW["weight_decay"], False, False, True, True)
    kid = _kernels.KERNEL_IDS["adam"]

    def kernel_step() -> None:
        plan.set_scalars(adam_scalars(plan.advance(), *hyper))
        plan.run(kid)
    kernel_step()
    fns["kernel on the arena's flat buffer"] = kernel_step

    fstate = ([np.zeros_like(p1)], [np.zeros_like(p1)], None, [0])
    fp, fg = [p1.copy()], [g1.copy()]
    fkw = dict(lr=MANY_TENSORS_KW["lr"], beta1=0.9, beta2=0.999, eps=1e-8,
               weight_decay=MANY_TENSORS_KW["weight_decay"])
    fns["fo.functional.adamw, flat buffer"] = lambda: fo.functional.adamw(fp, fg, *fstate, **fkw)

    if torch is not None:
        for label, extra in (("torch AdamW(fused=True)", dict(fused=True)),
                             ("torch AdamW(foreach=True)", dict(foreach=True))):
            tps = [torch.from_numpy(p.copy()) for p in ps]
            for tp, g in zip(tps, gs):
                tp.grad = torch.from_numpy(g)
            topt = torch.optim.AdamW(tps, **MANY_TENSORS_KW, **extra)
            topt.step()
            fns[f"{label}, separate"] = topt.step
    return fns


def _timeit_interleaved(fns: Mapping[str, Callable[[], object]], min_time: float,
                        repeat: int) -> dict[str, float]:
    """Best seconds per call of each function, the repeats interleaved (a burst of noise
    on this shared machine then hits every function, not one): {label: seconds}."""
    counts = {}
    for label, fn in fns.items():
        fn()
        t0 = time.perf_counter()
        fn()
        dt = max(time.perf_counter() - t0, 1e-7)
        counts[label] = max(1, int(min_time / dt))
    best = dict.fromkeys(fns, math.inf)
    for _ in range(repeat):
        for label, fn in fns.items():
            n = counts[label]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            best[label] = min(best[label], (time.perf_counter() - t0) / n)
    return best


def _optional_torch(use_torch: bool) -> Any:
    """torch when asked for and importable, else None (every torch column then reads '-')."""
    if not use_torch:
        return None
    try:
        import torch
    except ImportError:
        return None
    return torch


@contextlib.contextmanager
def _thread_counts(threads: Sequence[int],
                   torch: Any) -> Iterator[Callable[[], Iterator[int]]]:
    """Iterate over the thread counts with fusedoptim and torch (when present) both set to
    each; fusedoptim's setting is restored afterwards."""
    saved = fo.get_num_threads()

    def each() -> Iterator[int]:
        for nt in threads:
            fo.set_num_threads(nt)
            if torch is not None:
                torch.set_num_threads(nt)
            yield nt
    try:
        yield each
    finally:
        fo.set_num_threads(saved)


def run_many_tensors(count: int, size: int, threads: Sequence[int], min_time: float = 0.2,
                     repeat: int = 7, use_torch: bool = True,
                     out: TextIO = sys.stdout) -> dict[int, dict[str, float]]:
    """The many-tensors section: per-step times and the three target ratios, per thread
    count. Returns {threads: {label: seconds}}."""
    torch = _optional_torch(use_torch)
    policy = os.environ.get("OMP_WAIT_POLICY")
    print(f"many tensors: {count} x {size} float32, one AdamW step; OMP_WAIT_POLICY="
          f"{policy or 'unset'}", file=out)
    if torch is not None and policy is None and max(threads) > 1:
        # Set before the OpenMP runtime loads, so it cannot be fixed from here.
        print("note: torch shares this process, and idle OpenMP threads spin after each "
              "parallel region; multi-thread rows are more stable with OMP_WAIT_POLICY="
              "passive (or active) set in the environment. 1-thread rows are unaffected.",
              file=out)
    header = f"{'thr':>4}  {'layout':<40}{'us/step':>10}{'vs one flat':>13}"
    print(header, file=out)
    print("-" * len(header), file=out)
    results = {}
    with _thread_counts(threads, torch) as thread_counts:
        for nt in thread_counts():
            fns = many_tensor_fns(count, size, np.float32, torch)
            # fusedoptim's layouts interleaved with each other, then torch's with each other:
            # torch's threads come from the same OpenMP pool and keep spinning after each of
            # its parallel regions, which took the second core from a 2-thread fusedoptim
            # step timed right after (separate/flat read 1.5x instead of 1.2x).
            ours = {k: f for k, f in fns.items() if not k.startswith("torch")}
            t = _timeit_interleaved(ours, min_time, repeat)
            t.update(_timeit_interleaved({k: f for k, f in fns.items() if k not in ours},
                                         min_time, repeat))
            results[nt] = t
            flat = t["fo, one flat tensor"]
            for label, sec in t.items():
                print(f"{nt:>4}  {label:<40}{sec * 1e6:>10.1f}{sec / flat:>12.2f}x", file=out)
            checks = [("separate / one flat", t["fo, separate tensors"] / flat, "<=", 1.5),
                      ("arena / kernel", t["fo, FlatParams arena: step()"]
                       / t["kernel on the arena's flat buffer"], "<=", 1.1)]
            if torch is not None:
                checks.insert(0, ("torch fused / separate", t["torch AdamW(fused=True), "
                                  "separate"] / t["fo, separate tensors"], ">=", 10.0))
            for name, ratio, op, bound in checks:
                met = ratio <= bound if op == "<=" else ratio >= bound
                print(f"      target {name}: {ratio:.2f}x ({op} {bound}x: "
                      f"{'met' if met else 'NOT met'})", file=out)
            print(file=out, flush=True)
    return results


def step_overhead_us(cls: str = "Adam", repeat: int = 5) -> float:
    """Microseconds per step() on a single 1-element param (pure Python+call overhead)."""
    p, g = [np.zeros(1, np.float32)], [np.ones(1, np.float32)]
    opt = getattr(fo, cls)(p)
    opt.step(g)
    return _timeit(lambda: opt.step(g), 0.2, repeat) * 1e6


def run(cases: Sequence[BenchCase], sizes: Sequence[int], dtypes: Sequence[DTypeLike],
        threads: Sequence[int], min_time: float = 0.2, repeat: int = 5, reference: bool = True,
        use_torch: bool = True, out: TextIO = sys.stdout) -> list[dict[str, Any]]:
    torch = _optional_torch(use_torch)
    header = (f"{'optimizer':<15}{'dtype':>8}{'n':>11}{'thr':>4}{'fused Gel/s':>13}"
              f"{'ref Gel/s':>11}{'torch Gel/s':>13}{'torch path':>11}{'x ref':>8}"
              f"{'x torch':>9}{'% roofline':>12}")
    print(header, file=out)
    print("-" * len(header), file=out)
    rows: list[dict[str, Any]] = []
    with _thread_counts(threads, torch) as thread_counts:
        for case in cases:
            for dtype in dtypes:
                for n in sizes:
                    for nt in thread_counts():
                        row = dict(optimizer=case.name, dtype=np.dtype(dtype).name, n=n,
                                   threads=nt)
                        # Interleaved: the host's memory bandwidth drifts between runs on
                        # this shared machine (AdamW at 1e8 read 2.0 and 3.4 G el/s two
                        # minutes apart), so the step and its roofline share each repeat.
                        best = _timeit_interleaved({"fused": fused_step_fn(case, n, dtype),
                                                    "roof": roofline_fn(case, n, dtype)},
                                                   min_time, repeat)
                        t_fused, t_roof = best["fused"], best["roof"]
                        t_ref = (_timeit(fused_step_fn(case, n, dtype, reference=True),
                                         min_time, max(2, repeat // 2))
                                 if reference and n <= 10_000_000 else None)
                        t_torch: float | None
                        path: str | None
                        t_torch, path = None, ""
                        if torch is not None:
                            fn, path = torch_step_fn(case, n, dtype, torch)
                            if fn is not None:
                                t_torch = _timeit(fn, min_time, repeat)
                            path = path or "n/a"
                        row.update(fused_s=t_fused, roofline_s=t_roof, reference_s=t_ref,
                                   torch_s=t_torch, torch_path=path)
                        rows.append(row)
                        print(_format_row(row), file=out, flush=True)
    return rows


def _speed_cells(r: Mapping[str, Any]) -> tuple[str, str, str, str, str, str]:
    """G el/s of fused/reference/torch, the two speed-ups and the roofline share of a row."""
    n = r["n"]
    gel: Callable[[float | None], str] = lambda t: f"{n / t / 1e9:.3f}" if t else "-"
    ratio: Callable[[float | None], str] = lambda t: f"{t / r['fused_s']:.1f}x" if t else "-"
    return (gel(r["fused_s"]), gel(r["reference_s"]), gel(r["torch_s"]),
            ratio(r["reference_s"]), ratio(r["torch_s"]),
            f"{100 * r['roofline_s'] / r['fused_s']:.0f}%")


def _format_row(r: Mapping[str, Any]) -> str:
    fused, ref, torch, x_ref, x_torch, roof = _speed_cells(r)
    return (f"{r['optimizer']:<15}{r['dtype']:>8}{r['n']:>11.0e}{r['threads']:>4}"
            f"{fused:>13}{ref:>11}{torch:>13}{r['torch_path'] or '-':>11}{x_ref:>8}"
            f"{x_torch:>9}{roof:>12}")


# -- gradient utilities and skip_nonfinite ------------------------------------------------------

@dataclass
class UtilityRow:
    """One utility timing: fused, NumPy reference and torch callables on the same data, and
    a roofline with the same memory traffic."""
    label: str
    n: int
    # Called with no argument (Callable[..., object]: some bind their data as a default).
    fused: Callable[..., object]
    roofline: Callable[..., object]
    reference: Callable[..., object] | None = None
    torch: Callable[..., object] | None = None


def _array_plan(arrays: list[FloatArray]) -> _kernels.Plan:
    plan = _kernels.Plan(arrays, [None] * len(arrays), 0, 2, None)
    plan.active_array[...] = 1
    return plan


def _roofline(plan: _kernels.Plan, *names: str) -> Callable[[], object]:
    passes = [_touch_pass(plan, name) for name in names]
    return lambda: [run() for run in passes]


def utility_rows(n_tensors: int, tensor_size: int, big_sizes: Sequence[int], torch: Any = None,
                 reference: bool = True) -> list[UtilityRow]:
    """The rows of `fusedoptim bench --utilities`.

    Clipping rows use max_norm=0: every call then takes both passes (the norm, then the
    scale by a coefficient of 0), for fusedoptim and torch alike; after the first call the
    data is zero, which costs the same per element as any finite value. With a max_norm above
    the norm, clip_grad_norm_ is a single read-only pass (the "measures" rows)."""
    rng = np.random.default_rng(0)
    rows = []

    def torch_params(arrays: list[FloatArray]) -> list[Any]:
        params = []
        for a in arrays:
            # torch.empty is never touched, so the OS never backs it with memory; the grad
            # shares the array's memory: no second copy of a 1e8 buffer.
            p = torch.nn.Parameter(torch.empty(a.shape))
            p.grad = torch.from_numpy(a)
            params.append(p)
        return params

    many = [rng.standard_normal(tensor_size).astype(np.float32) for _ in range(n_tensors)]
    plan = _array_plan(many)
    label = f"{n_tensors}x{tensor_size}"
    tmany = torch_params(many) if torch is not None else None
    tg = [p.grad for p in tmany] if tmany is not None else None
    rows.append(UtilityRow(
        f"clip_grad_norm_ {label} (clips)", n_tensors * tensor_size,
        lambda: fo.clip_grad_norm_(many, 0.0), _roofline(plan, "touch_r1", "touch_w1"),
        (lambda: fo.reference.clip_grad_norm_(many, 0.0)) if reference else None,
        (lambda: torch.nn.utils.clip_grad_norm_(tmany, 0.0, foreach=True)) if tmany else None))
    rows.append(UtilityRow(
        f"global_norm {label}", n_tensors * tensor_size,
        lambda: fo.global_norm(many), _roofline(plan, "touch_r1"),
        (lambda: fo.reference.global_norm(many)) if reference else None,
        (lambda: torch.nn.utils.get_total_norm(tg, 2.0, foreach=True)) if tg else None))
    for n in big_sizes:
        x = [rng.standard_normal(n, dtype=np.float32)]
        plan = _array_plan(x)
        tp = torch_params(x) if torch is not None else None
        ref = reference and n <= 10_000_000
        rows.append(UtilityRow(
            "clip_grad_norm_ (measures)", n,
            lambda x=x: fo.clip_grad_norm_(x, math.inf), _roofline(plan, "touch_r1"),
            (lambda x=x: fo.reference.clip_grad_norm_(x, math.inf)) if ref else None,
            (lambda tp=tp: torch.nn.utils.clip_grad_norm_(tp, math.inf, foreach=True))
            if tp else None))
        rows.append(UtilityRow(
            "all_finite", n, lambda x=x: fo.all_finite(x), _roofline(plan, "touch_r1"),
            (lambda x=x: fo.reference.all_finite(x)) if ref else None,
            (lambda x=x: bool(torch.isfinite(torch.from_numpy(x[0])).all())) if tp else None))
        rows.append(UtilityRow(
            "clip_grad_value_", n, lambda x=x: fo.clip_grad_value_(x, 0.5),
            _roofline(plan, "touch_w1"),
            (lambda x=x: fo.reference.clip_grad_value_(x, 0.5)) if ref else None,
            (lambda tp=tp: torch.nn.utils.clip_grad_value_(tp, 0.5, foreach=True))
            if tp else None))
        rows.append(UtilityRow(
            "clip_grad_norm_ (clips)", n, lambda x=x: fo.clip_grad_norm_(x, 0.0),
            _roofline(plan, "touch_r1", "touch_w1"),
            (lambda x=x: fo.reference.clip_grad_norm_(x, 0.0)) if ref else None,
            (lambda tp=tp: torch.nn.utils.clip_grad_norm_(tp, 0.0, foreach=True))
            if tp else None))
    return rows


def skip_overhead(n: int = 1_000_000, min_time: float = 0.2,
                  repeat: int = 7) -> tuple[float, float, float, float]:
    """Seconds per AdamW step on finite float32 grads: (plain, with skip_nonfinite, with a
    separate check pass before it, the check pass alone). One optimizer
    with the flag switched per call, so both time the same buffers (two optimizers' arrays
    land at different addresses, which alone moved a 1e6 step by up to 10% here), and the
    repeats interleaved so that both see the same machine load."""
    p, g = _data(n, np.float32)
    opt = fo.AdamW([p], lr=1e-3)
    opt.step([g])                   # state exists, as in a training loop

    def step_with(flag: bool) -> None:
        opt.skip_nonfinite = flag
        opt.step([g])
    plan = opt._caches[0].plan
    assert plan is not None             # the step above built it
    nonfinite = _kernels.REDUCE_IDS["nonfinite"]
    best = _timeit_interleaved(
        {"plain": lambda: step_with(False),
         "skip": lambda: step_with(True),
         # the tuple only sequences the two calls, so step_with's None in it is never used
         "check, then step": lambda: (plan.reduce(nonfinite, 1, True),
                                      step_with(False)),  # type: ignore[func-returns-value]
         "check alone": lambda: plan.reduce(nonfinite, 1, True)},
        min_time, repeat)
    # For comparison: the design before the in-pass check (a separate check pass, then the
    # step), and the check's own read of the grads, the floor of any check.
    return best["plain"], best["skip"], best["check, then step"], best["check alone"]


def torch_skip_overhead(torch: Any, n: int = 1_000_000, min_time: float = 0.2,
                        repeat: int = 7) -> tuple[float, float]:
    """torch's equivalent, for comparison: AdamW(fused=True).step() alone, and with the
    found_inf check GradScaler runs before it (_amp_foreach_non_finite_check_and_unscale_,
    here with inv_scale 1, then the fused step reading found_inf)."""
    p, g = _data(n, np.float32)
    tp = torch.from_numpy(p)
    tp.grad = torch.from_numpy(g)
    opt = torch.optim.AdamW([tp], lr=1e-3, fused=True)
    opt.step()
    found_inf, inv_scale = torch.zeros(()), torch.ones(())

    def checked() -> None:
        found_inf.zero_()
        torch._amp_foreach_non_finite_check_and_unscale_([tp.grad], found_inf, inv_scale)
        opt.found_inf = found_inf
        opt.step()
        opt.found_inf = None
    best = _timeit_interleaved({"plain": opt.step, "checked": checked}, min_time, repeat)
    return best["plain"], best["checked"]


def run_utilities(threads: Sequence[int], big_sizes: Sequence[int], min_time: float = 0.2,
                  repeat: int = 5, reference: bool = True, use_torch: bool = True,
                  n_tensors: int = 1000, tensor_size: int = 1000,
                  out: TextIO = sys.stdout) -> list[dict[str, Any]]:
    torch = _optional_torch(use_torch)
    header = (f"{'utility':<34}{'n':>9}{'thr':>4}{'fused Gel/s':>13}{'ref Gel/s':>11}"
              f"{'torch Gel/s':>13}{'x ref':>8}{'x torch':>9}{'% roofline':>12}")
    print(header, file=out)
    print("-" * len(header), file=out)
    rows = utility_rows(n_tensors, tensor_size, big_sizes, torch, reference)
    results: list[dict[str, Any]] = []
    with _thread_counts(threads, torch) as thread_counts:
        for nt in thread_counts():
            for row in rows:
                r: dict[str, Any] = dict(utility=row.label, n=row.n, threads=nt,
                         fused_s=_timeit(row.fused, min_time, repeat),
                         roofline_s=_timeit(row.roofline, min_time, repeat),
                         reference_s=(_timeit(row.reference, min_time, max(2, repeat // 2))
                                      if row.reference else None),
                         torch_s=_timeit(row.torch, min_time, repeat) if row.torch else None)
                results.append(r)
                print(_format_utility(r), file=out, flush=True)
        print(file=out)
        for nt in thread_counts():      # torch too: its skip row runs at nt threads
            t_plain, t_skip, t_check, t_alone = skip_overhead(min_time=min_time, repeat=repeat)
            line = (f"AdamW step, 1e6 float32, {nt} thr: {t_plain * 1e6:.0f} us; with "
                    f"skip_nonfinite {t_skip * 1e6:.0f} us ({100 * (t_skip / t_plain - 1):+.1f}%; "
                    f"separate check pass first: {100 * (t_check / t_plain - 1):+.1f}%; the "
                    f"check alone: {t_alone * 1e6:.0f} us = {100 * t_alone / t_plain:.1f}%)")
            r = dict(utility="skip_nonfinite overhead", n=1_000_000, threads=nt,
                     plain_s=t_plain, skip_s=t_skip, check_first_s=t_check,
                     check_alone_s=t_alone)
            if torch is not None:
                r["torch_plain_s"], r["torch_checked_s"] = torch_skip_overhead(
                    torch, min_time=min_time, repeat=repeat)
                line += (f" | torch fused {r['torch_plain_s'] * 1e6:.0f} us; with GradScaler's "
                         f"found_inf check {r['torch_checked_s'] * 1e6:.0f} us "
                         f"({100 * (r['torch_checked_s'] / r['torch_plain_s'] - 1):+.1f}%)")
            print(line, file=out, flush=True)
            results.append(r)
    return results


def _format_utility(r: Mapping[str, Any]) -> str:
    fused, ref, torch, x_ref, x_torch, roof = _speed_cells(r)
    return (f"{r['utility']:<34}{r['n']:>9.0e}{r['threads']:>4}{fused:>13}{ref:>11}"
            f"{torch:>13}{x_ref:>8}{x_torch:>9}{roof:>12}")


# -- precision (issue 11) ----------------------------------------------------------------

#: AdamW as in every precision row
PRECISION_KW: dict[str, Any] = dict(lr=1e-3, weight_decay=1e-2)
#: bytes per element each step moves (DESIGN.md's roofline; issue 11): float32 AdamW reads and
#: writes p, m, v and reads g; int8 state reads and writes two code bytes and, per 256-element
#: block, two float32 absmaxes; bfloat16 params under master weights read and write the float32
#: master, read a bfloat16 grad, write the bfloat16 param and read and write float32 m and v.
BYTES_F32_ADAMW = 28.0
BYTES_INT8_ADAMW = 4 + 4 + 4 + 2 + 2 + 2 * (4 + 4) / 256
BYTES_BF16_MASTER_ADAMW = 4 + 4 + 2 + 2 + 8 + 8


def _optional_bnb(use_bnb: bool) -> tuple[Any, str]:
    """(bitsandbytes, "") when asked for and importable, else (None, why not)."""
    if not use_bnb:
        return None, "--no-bnb"
    try:
        import bitsandbytes
    except Exception as e:          # ImportError, or a backend that fails to load
        return None, f"bitsandbytes is not importable ({type(e).__name__}: {e})"
    return bitsandbytes, ""


def state_bytes_per_param(opt: fo.Optimizer, n: int) -> float:
    """Bytes of optimizer state per param element, from the state buffers' nbytes (codes,
    absmaxes, moments). The float32 master copy of a half-precision param is not counted: it
    is the param's precision overhead, not the optimizer's state."""
    nbytes = 0
    for st in opt.state.values():
        for key, v in st.items():
            if key != MASTER and isinstance(v, np.ndarray):
                nbytes += v.nbytes
    return nbytes / n


def _fo_adamw(n: int, dtype: DTypeLike = np.float32, grad_dtype: DTypeLike | None = None,
              seed: int = 0, shape: tuple[int, ...] | None = None,
              **kw: Any) -> tuple[fo.Optimizer, Callable[[], object]]:
    """An AdamW over one fresh param of n elements (1-D, or of `shape`), its state created:
    (optimizer, step)."""
    p, g = _data(n, np.float32, seed)
    if shape is not None:
        p, g = p.reshape(shape), g.reshape(shape)
    p = p.astype(dtype)
    grads = [g.astype(grad_dtype if grad_dtype is not None else dtype)]
    opt = fo.AdamW([p], **PRECISION_KW, **kw)
    opt.step(grads)
    return opt, lambda: opt.step(grads)


def _plan_touch(opt: fo.Optimizer, name: str) -> Callable[[], object]:
    """A roofline kernel run on an optimizer's own plan: the same buffers, columns and units."""
    plan = opt._caches[0].plan
    assert plan is not None             # the optimizer has stepped
    kid = _kernels.KERNEL_IDS[name]
    return lambda: plan.run(kid)


def _bnb_step(bnb: Any, torch: Any, n: int, cls: str) -> tuple[Callable[[], object], str]:
    """bitsandbytes' optimizer `cls` on a CPU torch param of n elements: (step, what its state
    is), after checking that it keeps the state it claims (8-bit: uint8 codes on the CPU)."""
    p, g = _data(n, np.float32)
    tp = torch.nn.Parameter(torch.from_numpy(p))
    tp.grad = torch.from_numpy(g)
    # min_8bit_size=1: every param gets 8-bit state (the default 4096 would keep float32 state
    # for the smoke run's tiny params; the 1e7 param is far above it either way).
    opt = getattr(bnb.optim, cls)([tp], **PRECISION_KW, min_8bit_size=1)
    opt.step()
    st = opt.state[tp]
    s1 = st["state1"]
    if s1.device.type != "cpu":
        raise RuntimeError(f"bitsandbytes {cls} state is on {s1.device}, not the CPU")
    if cls.endswith("8bit") and s1.dtype != torch.uint8:
        raise RuntimeError(f"bitsandbytes {cls} kept {s1.dtype} state, not 8-bit")
    nbytes = sum(v.numel() * v.element_size() for k, v in st.items()
                 if torch.is_tensor(v) and not k.startswith("qmap"))
    return opt.step, f"{s1.dtype}, {nbytes / n:.2f} B/param"


@dataclass
class PrecisionResult:
    """One row of `fusedoptim bench --precision`: seconds per step and what it is compared to."""
    section: str
    label: str
    n: int
    threads: int
    seconds: float
    note: str = ""


def _rate(n: int, t: float) -> str:
    return f"{n / t / 1e9:.3f}"


def run_precision(n_single: int, n_all: int, threads_all: int, min_time: float = 0.2,
                  repeat: int = 5, use_bnb: bool = True, use_torch: bool = True,
                  compute_n: int = 100_000, out: TextIO = sys.stdout) -> dict[str, Any]:
    """The issue-11 precision table. Every group of rows is timed interleaved (A, B, A, B...,
    the best of `repeat`), so each ratio compares rows of the same run. Returns the raw
    numbers: {"rows": [PrecisionResult...], "ratios": {...}, "state_bytes": {...}}."""
    import gc
    torch = _optional_torch(use_torch)
    bnb, why_no_bnb = _optional_bnb(use_bnb and torch is not None)
    if bnb is None and torch is None and use_bnb:
        why_no_bnb = "torch is not importable"
    rows: list[PrecisionResult] = []
    ratios: dict[str, float] = {}
    saved = fo.get_num_threads()

    def section(title: str, n: int, nt: int, fns: dict[str, Callable[[], object]],
                notes: Mapping[str, str] | None = None) -> dict[str, float]:
        print(f"\n{title}", file=out)
        print(f"  {'':<44}{'ms/step':>10}{'G el/s':>9}", file=out)
        best = _timeit_interleaved(fns, min_time, repeat)
        for label, t in best.items():
            note = (notes or {}).get(label, "")
            rows.append(PrecisionResult(title, label, n, nt, t, note))
            print(f"  {label:<44}{t * 1e3:>10.3f}{_rate(n, t):>9}"
                  f"{'  ' + note if note else ''}", file=out, flush=True)
        return best

    try:
        # 1. one thread, n_single float32 params: fused int8 vs bitsandbytes on the CPU
        fo.set_num_threads(1)
        if torch is not None:
            torch.set_num_threads(1)
        fns: dict[str, Callable[[], object]] = {}
        notes: dict[str, str] = {}
        _, fns["fo AdamW int8"] = _fo_adamw(n_single, state_dtype="int8", min_quantized_size=0)
        _, fns["fo AdamW float32"] = _fo_adamw(n_single)
        if bnb is not None:
            fns["bnb AdamW8bit (CPU)"], notes["bnb AdamW8bit (CPU)"] = _bnb_step(
                bnb, torch, n_single, "AdamW8bit")
            fns["bnb AdamW 32-bit (CPU)"], notes["bnb AdamW 32-bit (CPU)"] = _bnb_step(
                bnb, torch, n_single, "AdamW")
        if torch is not None:
            tp = torch.nn.Parameter(torch.from_numpy(_data(n_single, np.float32)[0]))
            tp.grad = torch.from_numpy(_data(n_single, np.float32)[1])
            topt = torch.optim.AdamW([tp], **PRECISION_KW, fused=True)
            topt.step()
            fns["torch AdamW(fused=True)"] = topt.step
        best = section(f"[1] {n_single:.0e} float32 params, 1 thread", n_single, 1, fns, notes)
        if bnb is not None:
            ratios["int8 / bnb AdamW8bit (x faster)"] = (
                best["bnb AdamW8bit (CPU)"] / best["fo AdamW int8"])
            ratios["int8 / bnb AdamW 32-bit (x faster)"] = (
                best["bnb AdamW 32-bit (CPU)"] / best["fo AdamW int8"])
        ratios["int8 / fo float32, 1 thread (x speed)"] = (
            best["fo AdamW float32"] / best["fo AdamW int8"])
        del fns, notes, best
        gc.collect()

        # 2. the compute bound: the same steps where every buffer stays in cache
        fns = {}
        _, fns["fo AdamW int8"] = _fo_adamw(compute_n, state_dtype="int8", min_quantized_size=0)
        _, fns["fo AdamW int4"] = _fo_adamw(compute_n, state_dtype="int4", min_quantized_size=0)
        _, fns["fo AdamW float32"] = _fo_adamw(compute_n)
        compute = section(f"[2] compute bound: {compute_n:.0e} params (in cache), 1 thread",
                          compute_n, 1, fns)
        del fns
        gc.collect()

        # 2b. int4 on a matrix: Li et al.'s rank-1 normalized second moment (the default) vs
        # blockwise (rank1_normalization=False) vs float32, 1 thread, at 1e6 (1000 x 1000)
        # and n_single (rows of 1000); below 1e6, one matrix of about n_single elements
        shapes = ([(1000, 1000)] if n_single >= 1_000_000 else
                  [(max(n_single // 64, 2), 64)])
        if n_single >= 2_000_000:
            shapes.append((n_single // 1000, 1000))
        for shape in shapes:
            n2 = shape[0] * shape[1]
            fns = {}
            notes = {}
            opts = {}
            for lab, rank1 in (("fo AdamW int4, rank-1 v", True),
                               ("fo AdamW int4, blockwise v", False)):
                opts[lab], fns[lab] = _fo_adamw(n2, shape=shape, state_dtype="int4",
                                                rank1_normalization=rank1)
                notes[lab] = f"state {state_bytes_per_param(opts[lab], n2):.4f} B/param"
            _, fns["fo AdamW float32"] = _fo_adamw(n2, shape=shape)
            best = section(f"[2b] int4 on a {shape} float32 param, 1 thread", n2, 1, fns,
                           notes)
            ratios[f"int4 rank-1 / blockwise at {shape} (x speed)"] = (
                best["fo AdamW int4, blockwise v"] / best["fo AdamW int4, rank-1 v"])
            ratios[f"int4 rank-1 / float32 at {shape} (x speed)"] = (
                best["fo AdamW float32"] / best["fo AdamW int4, rank-1 v"])
            del fns, opts
            gc.collect()

        # 3. all threads, n_all params: int8 and int4 vs float32, and int8's own roofline
        fo.set_num_threads(threads_all)
        fns = {}
        notes = {}
        opt8, fns["fo AdamW int8"] = _fo_adamw(n_all, state_dtype="int8", min_quantized_size=0)
        fns["roofline: touch_q8 (int8 traffic)"] = _plan_touch(opt8, "touch_q8")
        opt4, fns["fo AdamW int4"] = _fo_adamw(n_all, state_dtype="int4", min_quantized_size=0)
        opt32, fns["fo AdamW float32"] = _fo_adamw(n_all)
        fns["roofline: touch_rw3 (float32 traffic)"] = _plan_touch(opt32, "touch_rw3")
        sb = {"int8": state_bytes_per_param(opt8, n_all), "int4": state_bytes_per_param(opt4, n_all),
              "float32": state_bytes_per_param(opt32, n_all)}
        for k, lab in (("int8", "fo AdamW int8"), ("int4", "fo AdamW int4"),
                       ("float32", "fo AdamW float32")):
            notes[lab] = f"state {sb[k]:.4f} B/param"
        best = section(f"[3] {n_all:.0e} float32 params, {threads_all} threads", n_all,
                       threads_all, fns, notes)
        ratios[f"int8 / float32 at {n_all:.0e}, {threads_all} thr (x speed)"] = (
            best["fo AdamW float32"] / best["fo AdamW int8"])
        ratios[f"int4 / float32 at {n_all:.0e}, {threads_all} thr (x speed)"] = (
            best["fo AdamW float32"] / best["fo AdamW int4"])
        ratios["int8 step, % of touch_q8"] = (
            100 * best["roofline: touch_q8 (int8 traffic)"] / best["fo AdamW int8"])
        ratios["float32 step, % of touch_rw3"] = (
            100 * best["roofline: touch_rw3 (float32 traffic)"] / best["fo AdamW float32"])
        mem = best
        del fns, opt8, opt4, opt32
        gc.collect()

        # 4. bfloat16 grads on float32 params, and bfloat16 params with float32 master weights
        fns = {}
        notes = {}
        _, fns["fo AdamW f32 params, f32 grads"] = _fo_adamw(n_all)
        _, fns["fo AdamW f32 params, bf16 grads"] = _fo_adamw(n_all, grad_dtype=BF16)
        optm, fns["fo AdamW bf16 params + master, bf16 grads"] = _fo_adamw(n_all, dtype=BF16)
        fns["roofline: touch_bf16m (its traffic)"] = _plan_touch(optm, "touch_bf16m")
        notes["fo AdamW bf16 params + master, bf16 grads"] = (
            f"state {state_bytes_per_param(optm, n_all):.2f} B/param + 4 B master")
        best = section(f"[4] {n_all:.0e} params, {threads_all} threads: half-precision grads "
                       f"and params", n_all, threads_all, fns, notes)
        ratios["bf16-grad step / f32-grad step (cost)"] = (
            best["fo AdamW f32 params, bf16 grads"] / best["fo AdamW f32 params, f32 grads"])
        ratios["bf16+master step, % of touch_bf16m"] = (
            100 * best["roofline: touch_bf16m (its traffic)"]
            / best["fo AdamW bf16 params + master, bf16 grads"])
        del fns, optm
        gc.collect()
    finally:
        fo.set_num_threads(saved)

    # 5. state memory on a (1000, 1000) param
    state_bytes: dict[str, float] = {}
    for label, sd, rank1 in (("float32", "float32", True), ("bfloat16", "bfloat16", True),
                             ("int8", "int8", True), ("int4 (rank-1 v)", "int4", True),
                             ("int4 (blockwise)", "int4", False)):
        p = np.zeros((1000, 1000), np.float32)
        opt = fo.AdamW([p], **PRECISION_KW, state_dtype=sd, rank1_normalization=rank1)
        opt.step([np.full_like(p, 1e-3)])
        state_bytes[label] = state_bytes_per_param(opt, p.size)
    print("\n[5] AdamW state per param, (1000, 1000) float32 param, from the state buffers' "
          "nbytes:", file=out)
    print("  " + "   ".join(f"{k} {v:.4f} B" for k, v in state_bytes.items()), file=out)

    print("\nratios (from the rows above, each within its own interleaved run):", file=out)
    if bnb is None:
        print(f"  bitsandbytes columns skipped: {why_no_bnb}", file=out)
    for k, v in ratios.items():
        print(f"  {k:<52}{v:>8.2f}", file=out)

    # 6. the model at 4 GB/s per core: each step is bound by the slower of its memory traffic
    # (bytes/element at 4 GB/s) and its compute (the in-cache rate measured in [2]).
    c8 = compute_n / compute["fo AdamW int8"]
    c32 = compute_n / compute["fo AdamW float32"]
    bw = 4e9
    m8, m32 = bw / BYTES_INT8_ADAMW, bw / BYTES_F32_ADAMW
    r8, r32 = min(c8, m8), min(c32, m32)
    serial = (1 / (1 / m8 + 1 / c8)) / (1 / (1 / m32 + 1 / c32))
    print(f"\nmodel, per core at {bw / 1e9:.0f} GB/s: float32 AdamW {BYTES_F32_ADAMW:.0f} B/el "
          f"-> {m32 / 1e9:.3f} G el/s memory bound, {c32 / 1e9:.3f} compute bound; int8 "
          f"{BYTES_INT8_ADAMW:.4f} B/el -> {m8 / 1e9:.3f} memory bound, {c8 / 1e9:.3f} compute "
          f"bound; int8 / float32 = {r8 / r32:.2f}x (each at the lower of its two bounds; "
          f"{serial:.2f}x if compute and memory did not overlap at all)", file=out)
    ratios["model: int8 / float32 at 4 GB/s/core"] = r8 / r32
    measured_bw = {k: n_all * b / mem[lab] / threads_all for k, lab, b in (
        ("float32", "roofline: touch_rw3 (float32 traffic)", BYTES_F32_ADAMW),
        ("int8", "roofline: touch_q8 (int8 traffic)", BYTES_INT8_ADAMW))}
    print(f"here: the rooflines in [3] moved {measured_bw['float32'] / 1e9:.1f} (float32) and "
          f"{measured_bw['int8'] / 1e9:.1f} (int8) GB/s per thread", file=out)
    return {"rows": rows, "ratios": ratios, "state_bytes": state_bytes}


# -- SparseAdam (issue 12) ----------------------------------------------------------------------

def sparse_adam_fns(rows: int, dim: int, nnz: int, torch: Any = None,
                    seed: int = 0) -> dict[str, Callable[[], object]]:
    """One SparseAdam step on a (rows x dim) float32 table with `nnz` distinct touched rows
    (unsorted, as an embedding lookup gives them): fusedoptim's step() (validation, row table
    and kernel), its bare roofline (touch_rows: the same rows of param, exp_avg and
    exp_avg_sq read and written, the grad values read, nothing computed, through the same
    driver and row table), and torch.optim.SparseAdam with a sparse_coo grad."""
    from .optim.sparse_adam import row_table
    rng = np.random.default_rng(seed)
    idx = rng.choice(rows, nnz, replace=False).astype(np.int64)
    vals = (rng.standard_normal((nnz, dim)) * 1e-3).astype(np.float32)
    p = (rng.standard_normal((rows, dim)) * 1e-2).astype(np.float32)
    opt = fo.SparseAdam([p], lr=1e-3)
    grads = [fo.SparseGrad(idx, vals)]
    opt.step(grads)                      # creates the state
    st = opt.state[0]
    table = row_table(idx, rows)
    assert table is not None
    plan = _kernels.Plan([vals], [[p, st["exp_avg"], st["exp_avg_sq"], table]], 4,
                         len(_kernels.SCALARS["touch_rows"]), ["values"])
    plan.active_array[...] = 1
    plan.hp_array[...] = (1.0, float(dim), float(nnz))
    touch = _kernels.KERNEL_IDS["touch_rows"]
    fns: dict[str, Callable[[], object]] = {
        "fo SparseAdam.step": lambda: opt.step(grads),
        "roofline (touch_rows)": lambda: plan.run(touch),
    }
    if torch is not None:
        tp = torch.from_numpy(p.copy())
        topt = torch.optim.SparseAdam([tp], lr=1e-3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")     # torch: sparse invariant checks are off
            tp.grad = torch.sparse_coo_tensor(torch.from_numpy(idx)[None],
                                              torch.from_numpy(vals), (rows, dim))
        fns["torch SparseAdam.step"] = topt.step
    return fns


def run_sparse_adam(rows: int, dim: int, nnz: int, threads: Sequence[int],
                    min_time: float = 0.2, repeat: int = 7, use_torch: bool = True,
                    out: TextIO = sys.stdout) -> dict[int, dict[str, float]]:
    """The SparseAdam rows: per-step times (best and median of `repeat`), interleaved, and
    the issue's two targets per thread count (>= 5x torch; <= 2x the roofline), on both.
    Returns {threads: {label: best seconds}}."""
    torch = _optional_torch(use_torch)
    print(f"SparseAdam: a ({rows} x {dim}) float32 table, {nnz} distinct touched rows "
          f"(unsorted), timed interleaved, best and median of {repeat}; OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY') or 'unset'} (set it to passive for stable "
          f"multi-thread rows)", file=out)
    header = f"{'thr':>4}  {'':<28}{'best us':>10}{'median us':>11}{'vs fo':>9}"
    print(header, file=out)
    print("-" * len(header), file=out)
    results = {}
    fns = sparse_adam_fns(rows, dim, nnz, torch)
    with _thread_counts(threads, torch) as thread_counts:
        for nt in thread_counts():
            # all three interleaved (A, B, C, A, B, C, ...); torch's idle OpenMP threads
            # spin after its parallel regions unless OMP_WAIT_POLICY=passive (see
            # run_many_tensors), so multi-thread rows want that set
            t = _timeit_interleaved_stats(fns, min_time, repeat)
            results[nt] = {k: v[0] for k, v in t.items()}
            ours = t["fo SparseAdam.step"]
            for label, (best, med) in t.items():
                print(f"{nt:>4}  {label:<28}{best * 1e6:>10.1f}{med * 1e6:>11.1f}"
                      f"{best / ours[0]:>8.2f}x", file=out)
            roof = t["roofline (touch_rows)"]
            checks = [("fo / roofline", ours[0] / roof[0], ours[1] / roof[1], "<=", 2.0)]
            if torch is not None:
                tt = t["torch SparseAdam.step"]
                checks.insert(0, ("torch / fo", tt[0] / ours[0], tt[1] / ours[1], ">=", 5.0))
            for name, r_best, r_med, op, bound in checks:
                met = all(r <= bound if op == "<=" else r >= bound for r in (r_best, r_med))
                print(f"      target {name}: {r_best:.2f}x best, {r_med:.2f}x median ({op} "
                      f"{bound}x: {'met' if met else 'NOT met'})", file=out)
            print(file=out, flush=True)
    return results


# -- weight averaging (issue 12) ------------------------------------------------------------------

def ema_fns(count: int, size: int, decay: float = 0.999, torch: Any = None,
            seed: int = 0) -> dict[str, Callable[[], object]]:
    """One EMA update over `count` float32 arrays of `size` elements: fusedoptim.swa_utils'
    AveragedParams.update_parameters (one fused pass), and torch's
    AveragedModel.update_parameters with get_ema_multi_avg_fn over a module with the same
    parameters (use_buffers=False)."""
    from .swa_utils import AveragedParams
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(size).astype(np.float32) for _ in range(count)]
    avg = AveragedParams(params, decay=decay)
    avg.update_parameters(params)           # the first update copies; time the EMA ones
    fns: dict[str, Callable[[], object]] = {
        "fo AveragedParams.update_parameters": lambda: avg.update_parameters(params)}
    if torch is not None:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
        module = torch.nn.ParameterList([torch.nn.Parameter(torch.from_numpy(p.copy()))
                                         for p in params])
        tavg = AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(decay),
                             use_buffers=False)
        tavg.update_parameters(module)
        fns["torch AveragedModel.update_parameters"] = lambda: tavg.update_parameters(module)
    return fns


def run_ema(count: int, size: int, threads: Sequence[int], min_time: float = 0.2,
            repeat: int = 7, use_torch: bool = True,
            out: TextIO = sys.stdout) -> dict[int, dict[str, float]]:
    """The EMA rows: per-update times, interleaved, and the issue's target (>= 10x torch)
    per thread count."""
    torch = _optional_torch(use_torch)
    print(f"EMA update (decay 0.999): {count} x {size} float32, timed interleaved with "
          f"torch; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY') or 'unset'} (set it "
          f"to passive for stable multi-thread rows)", file=out)
    header = f"{'thr':>4}  {'':<42}{'us/update':>10}{'vs fo':>9}"
    print(header, file=out)
    print("-" * len(header), file=out)
    results = {}
    fns = ema_fns(count, size, torch=torch)
    with _thread_counts(threads, torch) as thread_counts:
        for nt in thread_counts():
            t = _timeit_interleaved(fns, min_time, repeat)
            results[nt] = t
            ours = t["fo AveragedParams.update_parameters"]
            for label, sec in t.items():
                print(f"{nt:>4}  {label:<42}{sec * 1e6:>10.1f}{sec / ours:>8.2f}x", file=out)
            if torch is not None:
                ratio = t["torch AveragedModel.update_parameters"] / ours
                print(f"      target torch / fo: {ratio:.2f}x (>= 10.0x: "
                      f"{'met' if ratio >= 10.0 else 'NOT met'})", file=out)
    return results


def _timeit_interleaved_stats(fns: Mapping[str, Callable[[], object]], min_time: float,
                              repeat: int) -> dict[str, tuple[float, float]]:
    """Like _timeit_interleaved, but (best, median) seconds per call of each function."""
    counts = {}
    for label, fn in fns.items():
        fn()
        t0 = time.perf_counter()
        fn()
        counts[label] = max(1, int(min_time / max(time.perf_counter() - t0, 1e-7)))
    times: dict[str, list[float]] = {label: [] for label in fns}
    for _ in range(repeat):
        for label, fn in fns.items():
            n = counts[label]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            times[label].append((time.perf_counter() - t0) / n)
    return {label: (min(t), float(np.median(t))) for label, t in times.items()}


def run_adafactor(shape: tuple[int, ...], threads: Sequence[int], min_time: float = 0.2,
                  repeat: int = 7, reference: bool = True, use_torch: bool = True,
                  out: TextIO = sys.stdout) -> dict[int, dict[str, tuple[float, float]]]:
    """Issue 12's Adafactor row: one float32 param of `shape`, default hyperparameters,
    fusedoptim vs torch.optim.Adafactor (its default, single-tensor path) vs the NumPy twin,
    timed interleaved. Returns {threads: {label: (best, median) seconds}}."""
    from . import reference as ref
    torch = _optional_torch(use_torch)
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(shape).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    print(f"Adafactor: one float32 param of shape {shape}, default hyperparameters; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset: active)')}", file=out)
    header = f"{'thr':>4}  {'step':<34}{'best ms':>10}{'median ms':>11}{'vs fused':>10}"
    print(header, file=out)
    print("-" * len(header), file=out)
    results = {}
    with _thread_counts(threads, torch) as thread_counts:
        for nt in thread_counts():
            p = p0.copy()
            opt = fo.Adafactor([p])
            fns: dict[str, Callable[[], object]] = {"fusedoptim Adafactor":
                                                    lambda: opt.step([g])}
            if torch is not None:
                tp = torch.from_numpy(p0.copy())
                tp.grad = torch.from_numpy(g)
                topt = torch.optim.Adafactor([tp])
                fns["torch.optim.Adafactor"] = topt.step
            if reference:
                q = p0.copy()
                twin = ref.Adafactor([q])
                fns["NumPy reference"] = lambda: twin.step([g])
            t = _timeit_interleaved_stats(fns, min_time, repeat)
            results[nt] = t
            base = t["fusedoptim Adafactor"]
            for label, (best, med) in t.items():
                print(f"{nt:>4}  {label:<34}{best * 1e3:>10.3f}{med * 1e3:>11.3f}"
                      f"{best / base[0]:>9.2f}x", file=out)
            if torch is not None:
                tb, tm = t["torch.optim.Adafactor"]
                ratio = tb / base[0]
                print(f"      target torch / fused >= 3x: {ratio:.2f}x best, "
                      f"{tm / base[1]:.2f}x median ({'met' if ratio >= 3 else 'NOT met'})",
                      file=out)
            print(file=out, flush=True)
    return results


class _LstsqProblem:
    """The L-BFGS bench problem: 0.5 sum w (x - c)^2 + 0.5 |U x - v|^2 over n params (U of
    4 rows), a least-squares problem whose closure costs a few passes in NumPy. Both sides
    call the same closure; `inside` accumulates the seconds spent in it.

    Its BLAS calls (the products with U and the dot products) run on one BLAS thread:
    OpenBLAS's threads spin for a while after each call, and on the 2-core development
    machine (AMD EPYC family 25 model 17, AVX-512) the spinning thread took the core that
    the optimizer's second thread needed outside the closure, on both sides (2 threads, one run each at load ~1: fusedoptim 179 ms and torch
    221 ms as before, 134 and 176 ms with OPENBLAS_THREAD_TIMEOUT=4, which stops the
    spinning). The closure's own time is not counted either way."""

    def __init__(self, n: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.w = rng.uniform(0.5, 5.0, n)
        self.c = rng.standard_normal(n)
        self.u = rng.standard_normal((4, n)) / math.sqrt(n)
        self.v = rng.standard_normal(4)
        self.inside = 0.0

    def __call__(self, x: FloatArray) -> tuple[float, FloatArray]:
        t0 = time.perf_counter()
        with blas_threads(1):
            xd = x.astype(np.float64)
            r = xd - self.c
            ur = self.u @ xd - self.v
            f = 0.5 * float(np.dot(self.w * r, r)) + 0.5 * float(ur @ ur)
            g = (self.w * r + self.u.T @ ur).astype(x.dtype)
        self.inside += time.perf_counter() - t0
        return f, g


def lbfgs_fns(n: int, torch: Any, line_search: str | None, dtype: DTypeLike = np.float32,
              max_iter: int = 20) -> dict[str, Callable[[], tuple[float, int]]]:
    """One LBFGS.step of max_iter iterations (tolerances 0, max_eval ample) from the
    same start, fused and torch; each returns (seconds outside the closure, evaluations)."""
    prob = _LstsqProblem(n)
    x0 = np.random.default_rng(1).standard_normal(n).astype(dtype)
    # max_eval above the line search's needs: every step runs its max_iter iterations
    kw: dict[str, Any] = dict(max_iter=max_iter, max_eval=10 * max_iter, tolerance_grad=0.0,
                              tolerance_change=0.0, line_search_fn=line_search)

    def fused() -> tuple[float, int]:
        x = x0.copy()
        opt = fo.LBFGS([x], **kw)
        prob.inside = 0.0
        t0 = time.perf_counter()
        opt.step(lambda: (lambda fg: (fg[0], [fg[1]]))(prob(x)))
        total = time.perf_counter() - t0
        assert opt._st["n_iter"] == max_iter
        return total - prob.inside, opt._st["func_evals"]

    fns = {"fused": fused}
    if torch is not None:
        def torch_step() -> tuple[float, int]:
            xt = torch.tensor(x0, requires_grad=True)
            opt = torch.optim.LBFGS([xt], **kw)

            def closure() -> float:
                f, g = prob(xt.detach().numpy())
                t0 = time.perf_counter()
                xt.grad = torch.from_numpy(g)
                prob.inside += time.perf_counter() - t0
                return f
            prob.inside = 0.0
            t0 = time.perf_counter()
            opt.step(closure)
            total = time.perf_counter() - t0
            st = opt.state[xt]
            assert st["n_iter"] == max_iter
            return total - prob.inside, st["func_evals"]
        fns["torch"] = torch_step
    return fns


def run_lbfgs(n: int, threads: Sequence[int], repeat: int = 5, use_torch: bool = True,
              out: TextIO = sys.stdout) -> list[dict[str, Any]]:
    """The L-BFGS rows: 20 iterations on an n-parameter least-squares problem, float32,
    without and with the strong Wolfe line search, fused vs torch.optim.LBFGS. Each side's
    time is its whole step() less the time inside its closure (timed inside the closure,
    including torch's setting of .grad); the sides alternate (A, B, A, B...) and the best of
    `repeat` runs is reported."""
    torch = _optional_torch(use_torch)
    rows = []
    print(f"LBFGS, {n:.0e} float32 params, 20 iterations per step (tolerances 0), time "
          f"outside the closure, best of {repeat}:", file=out)
    print(f"{'line search':>13} {'threads':>7} {'evals f/t':>9} {'fused ms':>9} "
          f"{'torch ms':>9} {'speed-up':>8}", file=out)
    with _thread_counts(threads, torch) as each:
        for nt, ls in ((nt, ls) for nt in each() for ls in (None, "strong_wolfe")):
            fns = lbfgs_fns(n, torch, ls)
            best: dict[str, float] = {k: math.inf for k in fns}
            evals: dict[str, int] = {}
            for _ in range(repeat):
                for k, fn in fns.items():
                    t, e = fn()
                    best[k] = min(best[k], t)
                    evals[k] = e
            # (float32 rounding may move a line-search decision: the counts are shown)
            ev = f"{evals['fused']}/{evals.get('torch', '-')}"
            tt = best.get("torch", math.nan)
            row = dict(line_search=str(ls), threads=nt, evals=ev, fused=best["fused"],
                       torch=tt)
            rows.append(row)
            print(f"{str(ls):>13} {nt:>7} {ev:>9} {best['fused'] * 1e3:>9.1f} "
                  f"{tt * 1e3:>9.1f} {tt / best['fused']:>7.2f}x", file=out)
    return rows


# -- Muon ---------------------------------------------------------------------------------------

#: (label, count, shape) of the Muon rows: the issue's two targets and many small matrices
MUON_ROWS = (("1 x (1024, 1024)", 1, (1024, 1024), 1.0),
             ("64 x (256, 256)", 64, (256, 256), 1.5),
             ("512 x (32, 32)", 512, (32, 32), None))


def torch_zeropower_float32(torch: Any) -> Callable[..., Any]:
    """torch.optim.Muon's Newton-Schulz function with its bfloat16 cast replaced by a copy in
    the gradient's dtype (torch's operations otherwise, one for one): the fair comparison on
    a CPU, where the cast makes torch's iteration take seconds."""
    def zeropower(grad: Any, ns_coefficients: tuple[float, float, float], ns_steps: int,
                  eps: float) -> Any:
        if ns_steps >= 100:          # torch's own check
            raise ValueError("Number of steps must be less than 100 for computational "
                             "efficiency")
        a, b, c = ns_coefficients
        # a copy, not the tensor itself: dropping the cast alone would make the in-place
        # div_ below scale the momentum buffer when nesterov=False
        ortho = grad.clone()
        if grad.size(0) > grad.size(1):
            ortho = ortho.T
        ortho.div_(ortho.norm().clamp(min=eps))
        for _ in range(ns_steps):
            gram = ortho @ ortho.T
            update = torch.addmm(gram, gram, gram, beta=b, alpha=c)
            ortho = torch.addmm(ortho, update, ortho, beta=a)
        if grad.size(0) > grad.size(1):
            ortho = ortho.T
        return ortho
    return zeropower


def muon_fns(count: int, shape: tuple[int, int], nt: int, torch: Any = None,
             reference: bool = True) -> dict[str, Callable[[], object]]:
    """One Muon step (lr 0.02, torch's other defaults) over `count` float32 params of `shape`,
    its state already created: fusedoptim and the NumPy twin (BLAS at `nt` threads), torch
    with its iteration in float32 (torch at `nt` threads): {label: step function}."""
    rng = np.random.default_rng(0)
    ps = [rng.standard_normal(shape).astype(np.float32) for _ in range(count)]
    gs = [rng.standard_normal(shape).astype(np.float32) for _ in range(count)]
    fns: dict[str, Callable[[], object]] = {}
    opt = fo.Muon([p.copy() for p in ps], lr=0.02, blas_threads=nt)
    opt.step(gs)
    fns["fo.Muon"] = lambda: opt.step(gs)
    if reference:
        ref = fo.reference.Muon([p.copy() for p in ps], lr=0.02)
        ref.step(gs)

        def reference_step() -> None:
            # the twin calls NumPy's BLAS directly: at the row's thread count too, or it
            # would run at BLAS's default (every core) against a 1-thread fused step
            with blas_threads(nt):
                ref.step(gs)
        fns["fo.reference.Muon"] = reference_step
    if torch is not None:
        import torch.optim._muon as torch_muon
        shipped = torch_muon._zeropower_via_newtonschulz
        f32 = torch_zeropower_float32(torch)
        tps = [torch.from_numpy(p.copy()) for p in ps]
        for tp, g in zip(tps, gs):
            tp.grad = torch.from_numpy(g)
        topt = torch.optim.Muon(tps, lr=0.02)

        def torch_f32_step() -> None:
            torch_muon._zeropower_via_newtonschulz = f32
            try:
                topt.step()
            finally:
                torch_muon._zeropower_via_newtonschulz = shipped
        torch_f32_step()
        fns["torch Muon, float32 iteration"] = torch_f32_step
    return fns


def run_muon(threads: Sequence[int], min_time: float = 0.2, repeat: int = 5,
             use_torch: bool = True, reference: bool = True, shipped: bool = True,
             out: TextIO = sys.stdout) -> dict[tuple[str, int], dict[str, float]]:
    """The Muon rows: per row and thread count, fusedoptim, its twin and torch (float32
    iteration) timed interleaved (A, B, A, B ..., best of `repeat`), BLAS and torch at the
    same thread count; torch's shipped bfloat16 Muon timed once (one step: seconds)."""
    torch = _optional_torch(use_torch)
    print("Muon, float32, lr=0.02 (torch's defaults otherwise). fusedoptim's BLAS (NumPy's) "
          "and torch's (MKL) at the row's thread count.", file=out)
    if max(threads) > 1 and "OPENBLAS_THREAD_TIMEOUT" not in os.environ:
        # A step that runs OpenBLAS on 2+ threads (the twin; fo.Muon on one large matrix)
        # leaves its workers spinning, and they slow the torch step timed next: measured,
        # torch's 2-thread 1024 x 1024 row took 216-273 ms after them and 167-175 ms without
        # in four runs of five (AMD EPYC family 25 model 17, AVX-512; README).
        print("note: OPENBLAS_THREAD_TIMEOUT is not set, so OpenBLAS's idle workers spin "
              "after each multi-threaded call and slow the torch step timed after them; run "
              "with OPENBLAS_THREAD_TIMEOUT=4 for a fair comparison.", file=out)
    header = f"{'thr':>4}  {'params':<18}{'step':<34}{'ms/step':>10}{'torch f32 / this':>18}"
    print(header, file=out)
    print("-" * len(header), file=out)
    results = {}
    with _thread_counts(threads, torch) as thread_counts:
        for nt in thread_counts():
            for label, count, shape, target in MUON_ROWS:
                fns = muon_fns(count, shape, nt, torch, reference)
                t = _timeit_interleaved(fns, min_time, repeat)
                if torch is not None and shipped and shape[0] >= 256:
                    tps = [torch.zeros(shape) for _ in range(count)]
                    for tp in tps:
                        tp.grad = torch.ones(shape)
                    bf16 = torch.optim.Muon(tps, lr=0.02)
                    t0 = time.perf_counter()
                    bf16.step()
                    t["torch Muon as shipped (bfloat16), 1 step"] = time.perf_counter() - t0
                results[(label, nt)] = t
                base = t.get("torch Muon, float32 iteration")
                for name, sec in t.items():
                    ratio = f"{base / sec:>17.2f}x" if base else f"{'-':>18}"
                    print(f"{nt:>4}  {label:<18}{name:<34}{sec * 1e3:>10.2f}{ratio}", file=out)
                if base and target is not None:
                    r = base / t["fo.Muon"]
                    print(f"      target fo.Muon vs torch (float32 iteration): {r:.2f}x "
                          f"(>= {target}x: {'met' if r >= target else 'NOT met'})", file=out)
                if label.startswith("512"):
                    print(f"      per matrix: fo.Muon {t['fo.Muon'] / count * 1e6:.1f} us"
                          + (f", torch {base / count * 1e6:.1f} us" if base else ""), file=out)
                print(file=out, flush=True)
    return results


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]
               ) -> argparse.ArgumentParser:
    p = subparsers.add_parser("bench", help="time the fused kernels against the NumPy "
                              "reference and torch on this machine")
    p.add_argument("--optimizers", default=None,
                   help="comma-separated case names (default: all): "
                        + ", ".join(c.name for c in BENCH_CASES))
    p.add_argument("--sizes", default=None,
                   help="comma-separated element counts (default 1e5,1e6; 1e8 with "
                        "--utilities)")
    p.add_argument("--dtypes", default="float32", help="float32,float64")
    p.add_argument("--threads", default=None,
                   help="comma-separated thread counts (default: 1 and all)")
    p.add_argument("--repeat", type=int, default=5, help="repeats; the best is reported")
    p.add_argument("--min-time", type=float, default=0.2, help="seconds per repeat")
    p.add_argument("--no-reference", action="store_true")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--many-tensors", nargs="?", const="1000x1000", default=None,
                   metavar="COUNTxSIZE",
                   help="instead of the table, time one AdamW step over COUNT tensors of SIZE "
                        "elements (default 1000x1000): separate, one flat, FlatParams, the "
                        "bare kernel, torch. With torch in the process, run with "
                        "OMP_WAIT_POLICY=passive")
    p.add_argument("--utilities", action="store_true",
                   help="time the gradient utilities (clip_grad_norm_ over 1000x1000 and on "
                        "one buffer of each --sizes, default 1e8; all_finite; "
                        "clip_grad_value_) and skip_nonfinite's cost on a 1e6 AdamW step, "
                        "instead of the optimizer table")
    p.add_argument("--precision", action="store_true",
                   help="the issue-11 precision table instead: int8/int4 AdamW vs float32 and "
                        "bitsandbytes on the CPU, their rooflines and compute bound, bfloat16 "
                        "grads and params, state bytes per param. --sizes N1,N2: N1 params on "
                        "1 thread (default 1e7), N2 on all threads (default 1e8)")
    p.add_argument("--sparse-adam", nargs="?", const="1000000x64:4096", default=None,
                   metavar="ROWSxDIM:NNZ",
                   help="instead of the table, time one SparseAdam step on a ROWSxDIM float32 "
                        "table with NNZ touched rows (default 1000000x64:4096) against its "
                        "roofline and torch.optim.SparseAdam")
    p.add_argument("--ema", nargs="?", const="1000x1000", default=None, metavar="COUNTxSIZE",
                   help="instead of the table, time one EMA update (swa_utils.AveragedParams) "
                        "over COUNT float32 tensors of SIZE elements (default 1000x1000) "
                        "against torch's AveragedModel with get_ema_multi_avg_fn")
    p.add_argument("--adafactor", nargs="?", const="1024x1024", default=None,
                   metavar="SHAPE",
                   help="instead of the table, time one Adafactor step on a float32 param of "
                        "SHAPE (default 1024x1024; --threads default 1) against "
                        "torch.optim.Adafactor and the NumPy twin, interleaved")
    p.add_argument("--lbfgs", action="store_true",
                   help="the L-BFGS rows instead: 20 iterations on a least-squares problem "
                        "of --sizes params (default 1e6), float32, without and with "
                        "strong_wolfe, fused vs torch.optim.LBFGS, time outside the closure")
    p.add_argument("--no-bnb", action="store_true",
                   help="with --precision: leave out the bitsandbytes rows")
    p.add_argument("--external", action="store_true",
                   help="time the optimizers torch.optim lacks against their official "
                        "releases (or Optax under jax.jit), interleaved; default 1e5 "
                        "elements, 1 thread (needs the conformance extra)")
    p.add_argument("--wrappers", action="store_true",
                   help="the extra pass of Lookahead and MultiSteps against a roofline kernel "
                        "of the same traffic, interleaved; default 1e8 elements, all threads")
    p.add_argument("--torch", action="store_true",
                   help="the fusedoptim.torch rows instead: AdamW steps of 1000 torch params "
                        "and one 1e5 param vs torch.optim.AdamW(fused=True), clip_grad_norm_, "
                        "a TransformerEncoder trained end to end, the step after a matmul")
    p.add_argument("--muon", action="store_true",
                   help="the Muon rows instead: one (1024, 1024) param, 64 of (256, 256) and "
                        "512 of (32, 32), against torch.optim.Muon with its iteration in "
                        "float32 (and as shipped, in bfloat16, timed once)")
    p.add_argument("--distributed", action="store_true",
                   help="under mpirun -n N: ZeroRedundancyOptimizer's state memory per rank "
                        "and step time against its parts and torch's ZeRO over gloo "
                        "(float32 AdamW, --sizes default 1e7; needs the mpi extra)")
    p.set_defaults(func=main)
    return p


_COUNT_SIZE = "COUNTxSIZE with both >= 1, e.g. 1000x1000"


def _dims(text: str, option: str, expected: str, ndim: int | None = None) -> tuple[int, ...]:
    """A positive shape written AxBx..., or exit naming the option, what it takes and the
    value given."""
    try:
        dims = tuple(int(x) for x in text.lower().split("x"))
        if not dims or any(x < 1 for x in dims) or (ndim is not None and len(dims) != ndim):
            raise ValueError
    except ValueError:
        raise SystemExit(f"fusedoptim bench: error: {option} takes {expected}; "
                         f"got {text!r}") from None
    return dims


def _bench_error(message: str) -> NoReturn:
    """Exit with one line on stderr (status 1): bad input never shows a traceback."""
    raise SystemExit(f"fusedoptim bench: error: {message}")


def _parse_list(text: str, conv: Callable[[str], _T], option: str, kind: str) -> list[_T]:
    """The comma-separated values of `option`, or exit naming it, what it takes and `text`."""
    try:
        values = [conv(x) for x in text.split(",") if x.strip()]
    except (ValueError, TypeError, OverflowError):     # int('x'), np.dtype('foo'), int(inf)
        values = []
    if not values:
        _bench_error(f"{option} takes a comma-separated list of {kind}, got {text!r}")
    return values


def _size(text: str) -> int:
    value = float(text)                    # 1e6 is a size; inf and nan raise or fail below
    if not value >= 1 or value != int(value):
        raise ValueError(text)
    return int(value)


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def _check_timing(args: argparse.Namespace) -> None:
    if args.repeat < 1:
        _bench_error(f"--repeat takes an integer >= 1, got {args.repeat}")
    if not 0 <= args.min_time < math.inf:
        _bench_error(f"--min-time takes a number of seconds >= 0, got {args.min_time}")


_SIZES = "sizes >= 1 such as 1e5,1e6"


def _sparse_adam_dims(text: str) -> tuple[int, int, int]:
    try:
        shape, nnz_text = text.lower().split(":")
        rows, dim = (_size(x) for x in shape.split("x"))
        nnz = _size(nnz_text)
        if not nnz <= rows:
            raise ValueError
    except (ValueError, OverflowError):
        _bench_error(f"--sparse-adam takes ROWSxDIM:NNZ with 1 <= NNZ <= ROWS, e.g. "
                     f"1000000x64:4096; got {text!r}")
    return rows, dim, nnz


def main(args: argparse.Namespace) -> int:
    _check_timing(args)
    if args.distributed:
        from .distributed.bench import run_distributed
        sizes = _parse_list(args.sizes if args.sizes is not None else "1e7", _size, "--sizes",
                            _SIZES)
        if len(sizes) != 1:
            _bench_error(f"--distributed takes one size, got --sizes {args.sizes!r}")
        return run_distributed(sizes[0], repeat=args.repeat, use_torch=not args.no_torch)
    cases = BENCH_CASES
    if args.optimizers is not None:
        wanted = _parse_list(args.optimizers, str, "--optimizers", "case names")
        known = {c.name.lower(): c for c in BENCH_CASES}
        bad = [w for w in wanted if w.lower() not in known]
        if bad:
            raise SystemExit(f"fusedoptim bench: error: unknown optimizer(s) {bad}; "
                             f"choose from {[c.name for c in BENCH_CASES]}")
        cases = [known[w.lower()] for w in wanted]
    sizes = _parse_list(args.sizes if args.sizes is not None else
                        ("1e8" if args.utilities else "1e7,1e8" if args.precision
                         else "1e6" if args.lbfgs else "1e5,1e6"), _size, "--sizes", _SIZES)
    dtypes = _parse_list(args.dtypes, np.dtype, "--dtypes", "float32 and/or float64")
    if any(d not in (np.float32, np.float64) for d in dtypes):
        _bench_error(f"--dtypes takes float32 and/or float64, got {args.dtypes!r}")
    all_threads = fo.get_num_threads()
    threads = (_parse_list(args.threads, _count, "--threads", "thread counts >= 1")
               if args.threads is not None else sorted({1, all_threads}))
    # Every option is checked before anything is printed or run.
    shape = (_dims(args.adafactor, "--adafactor", "a shape like 1024x1024 (each >= 1)")
             if args.adafactor is not None else None)
    many = _dims(args.many_tensors, "--many-tensors", _COUNT_SIZE, 2) \
        if args.many_tensors is not None else None
    ema = _dims(args.ema, "--ema", _COUNT_SIZE, 2) if args.ema is not None else None
    sparse = _sparse_adam_dims(args.sparse_adam) if args.sparse_adam is not None else None
    fo.show_config()
    print()
    if shape is not None:
        run_adafactor(shape, threads if args.threads else [1], min_time=args.min_time,
                      repeat=args.repeat, reference=not args.no_reference,
                      use_torch=not args.no_torch)
        return 0
    if many is not None:
        count, size = many
        run_many_tensors(count, size, threads, min_time=args.min_time, repeat=args.repeat,
                         use_torch=not args.no_torch)
        return 0
    if ema is not None:
        count, size = ema
        run_ema(count, size, threads, min_time=args.min_time, repeat=args.repeat,
                use_torch=not args.no_torch)
        return 0
    if sparse is not None:
        rows, dim, nnz = sparse
        run_sparse_adam(rows, dim, nnz, threads, min_time=args.min_time, repeat=args.repeat,
                        use_torch=not args.no_torch)
        return 0
    if args.lbfgs:
        for n in sizes:
            run_lbfgs(n, threads, repeat=args.repeat, use_torch=not args.no_torch)
        return 0
    if args.precision:
        print(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset: active)')}")
        n_all = sizes[-1]
        run_precision(sizes[0], n_all, max(threads), min_time=args.min_time,
                      repeat=args.repeat, use_bnb=not args.no_bnb, use_torch=not args.no_torch,
                      compute_n=min(100_000, n_all))
        return 0
    if args.external:
        from .bench_external import run_external
        run_external([c for c in cases if c.external], sizes if args.sizes else [100_000],
                     threads if args.threads else [1], min_time=args.min_time,
                     repeat=args.repeat)
        return 0
    if args.wrappers:
        from .bench_wrappers import run_wrappers
        run_wrappers(sizes if args.sizes else [100_000_000],
                     threads if args.threads else [all_threads], min_time=args.min_time,
                     repeat=args.repeat)
        print("\n'% roofline': a trivial kernel moving the same bytes, timed interleaved; "
              ">= 100% means the wrapper's pass costs no more than the roofline time.")
        return 0
    if args.torch:
        from .torch._bench import run_torch
        run_torch(threads, min_time=args.min_time, repeat=args.repeat)
        return 0
    if args.muon:
        run_muon(threads, min_time=args.min_time, repeat=args.repeat,
                 use_torch=not args.no_torch, reference=not args.no_reference)
        return 0
    if args.utilities:
        print(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset: active)')}. With "
              f"torch in the same process on few cores, idle OpenMP threads of one library "
              f"slow the other; compare 1-thread rows, or run with OMP_WAIT_POLICY=passive.")
        print()
        run_utilities(threads, sizes, min_time=args.min_time, repeat=args.repeat,
                      reference=not args.no_reference, use_torch=not args.no_torch)
        print("\nfused/reference/torch columns are from this one run; '% roofline' compares "
              "with trivial kernels of the same memory traffic (touch_r1: read every element; "
              "touch_w1: read and write every element).")
        return 0
    print(f"step() overhead, one 1-element param: {step_overhead_us():.2f} us")
    print()
    run(cases, sizes, dtypes, threads, min_time=args.min_time, repeat=args.repeat,
        reference=not args.no_reference, use_torch=not args.no_torch)
    print("\nfused/reference/torch columns are from this one run; '% roofline' is the fused "
          "step's speed relative to a trivial kernel with the same memory traffic.")
    return 0
