"""Soak and leak tests (issue 16): a long training loop, with state_dict/load_state_dict and
fo.save/fo.load every 1000 steps, keeps its memory flat; building and dropping thousands of
optimizers, schedulers and FlatParams arenas gives the memory back.

Four optimizer kinds soak over one 1000-tensor model (~180K elements): AdamW on a list with
clip_grad_norm_ every step, SGD with Nesterov momentum on a FlatParams arena, AdamW with int8
state on a dict, AdamW on bfloat16 params with float32 master weights; each with a scheduler
that is checkpointed too.

Each check runs in a fresh subprocess (this file run as a script), so the suite's other
allocations do not blur the numbers. Two measures:

* **RSS** (``/proc/self/statm``, after each checkpoint interval and a ``gc.collect()``, with
  tracemalloc off, after malloc_trim): the median of the last three samples may exceed the
  median of the three after the warm-up (3 intervals) by less than ``RSS_LIMIT`` (1 MiB);
* then **tracemalloc** (on for the rest of the run), filtered to allocations with a frame in
  fusedoptim's own files: the live size after the traced intervals may exceed the one before
  them by at most ``TRACED_LIMIT`` bytes.

CI runs a short soak: ``SOAK_STEPS_CI`` steps per kind with a checkpoint every 500 (9 RSS
samples: warm-up, then two windows of 3) and 1000 traced ones, and 1000 builds; the same
checks and limits. ~30 s of CPU in all. The full run, 100,000 steps per kind
(10,000 traced) and 10,000 builds, is selected with ``FUSEDOPTIM_SOAK_STEPS=100000``
(README, Reliability); ``pytest -s`` prints the numbers::

    FUSEDOPTIM_SOAK_STEPS=100000 pytest -s tests/test_soak.py
"""

import ctypes
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
import weakref

import numpy as np
import pytest

RSS_LIMIT = 1 << 20                 # the bound on RSS growth after warm-up
# Live bytes allocated from fusedoptim's files may grow by at most this much over the traced
# intervals. Not 0: a few small objects made before tracing started (the empty dicts of a
# group's reset state, 64 B each) are replaced by traced ones; measured, this offset is a
# constant 160-320 B whether 1 or 10 intervals are traced. A leak of 4 bytes per step over the
# 1000 traced steps of the CI run, or of one array per checkpoint in the full run (10
# checkpoints traced), is larger.
TRACED_LIMIT = 4096
SOAK_STEPS_CI = 4500
SOAK_STEPS = int(os.environ.get("FUSEDOPTIM_SOAK_STEPS", SOAK_STEPS_CI))
# steps between state_dict/load_state_dict + save/load: 1000 (the issue's) in the full run;
# 500 in CI, so its short run still has the nine RSS samples the windows below need
CHECKPOINT_EVERY = 1000 if SOAK_STEPS > SOAK_STEPS_CI else 500
# The RSS baseline is taken after the 3rd interval: RSS grows once or twice in the first three
# (0.2-2 MB measured, less with glibc's dynamic mmap threshold pinned by
# MALLOC_MMAP_THRESHOLD_: the allocator settling; seen as late as the 3rd: samples 65.65,
# 65.15, 66.18, 66.17, 66.19 MiB), then stays flat.
WARMUP_INTERVALS = 3
# Growth is the median RSS of the last RSS_WINDOW samples minus the median of the RSS_WINDOW
# from the baseline on. A leak lifts every sample, so the medians too; a 1 MiB pymalloc arena
# held at one sample and released at the next, or freed at one and taken again (measured in
# the int8 run: 65.02, 65.02, 65.04, 66.05 MiB; another run 65.98, 64.88, 65.94), moves one
# sample of a window, not its median.
RSS_WINDOW = 3
# tracemalloc frames kept per allocation; the filter keeps an allocation when any of them is
# in fusedoptim (so an array numpy allocates inside a helper the package calls counts).
TRACE_FRAMES = 2
LIFECYCLE_CI = 1000                 # optimizers built and dropped (10,000 in the full run)
LIFECYCLE = 10_000 if SOAK_STEPS > SOAK_STEPS_CI else LIFECYCLE_CI
N_TENSORS = 1000

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads RSS from /proc/self/statm")

KINDS = ["adamw", "sgd_momentum_flat", "adamw_int8", "adamw_bf16_master"]


# -- the worker (runs in the subprocess) ---------------------------------------------------------

def _rss() -> int:
    """Resident bytes, after handing glibc's cached free pages back (malloc_trim): a leak
    stays resident, what the allocator merely keeps for reuse (the int8 run's RSS swung by
    +900/-628 KiB between samples without it) does not."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):       # not glibc: sample as is
        pass
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _package_dir() -> str:
    import fusedoptim
    return os.path.dirname(os.path.abspath(fusedoptim.__file__))


def _traced(snapshot: tracemalloc.Snapshot) -> tracemalloc.Snapshot:
    """The snapshot's allocations with any frame in fusedoptim's files."""
    pattern = os.path.join(_package_dir(), "*")
    return snapshot.filter_traces([tracemalloc.Filter(True, pattern, all_frames=True)])


def _sizes(seed: int = 0) -> list[int]:
    """1000 tensor sizes: mostly small (1-200 elements), every 50th a 64 x 64 matrix, so int8
    state (min_quantized_size=256) quantizes about a third of the model's ~180K elements and
    the grouped step spans several work units."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 200, N_TENSORS)
    sizes[::50] = 4096
    return [int(s) for s in sizes]


def _model(kind: str):
    """(optimizer, scheduler, params to checkpoint or None, step function) for one kind."""
    import ml_dtypes

    import fusedoptim as fo
    from fusedoptim import lr_scheduler as lrs

    rng = np.random.default_rng(1)
    sizes = _sizes()
    shapes = [(s // 64, 64) if s % 64 == 0 else (s,) for s in sizes]

    def arrays(dtype):
        return [rng.standard_normal(s).astype(dtype) for s in shapes]

    if kind == "adamw":           # a list of 1000 arrays; clipping every step; warm restarts
        params = arrays(np.float32)
        grads = [0.01 * g for g in arrays(np.float32)]
        opt = fo.AdamW(params, lr=1e-3, weight_decay=0.01)
        sched = lrs.CosineAnnealingWarmRestarts(opt, T_0=700, T_mult=1)

        def step():
            fo.clip_grad_norm_(grads, max_norm=1.0)
            opt.step(grads)
            sched.step()
        return opt, sched, None, step
    if kind == "sgd_momentum_flat":   # a FlatParams arena, saved with the checkpoint
        arena = fo.FlatParams({f"layer{i}": s for i, s in enumerate(shapes)})
        arena.flat[:] = rng.standard_normal(arena.size)
        arena.flat_grad[:] = 0.01 * rng.standard_normal(arena.size)
        opt = fo.SGD(arena, lr=1e-3, momentum=0.9, nesterov=True, weight_decay=1e-4)
        sched = lrs.StepLR(opt, step_size=3000, gamma=0.9)

        def step():
            opt.step()
            sched.step()
        return opt, sched, arena, step
    if kind == "adamw_int8":      # blockwise int8 moments; a dict of params, saved too
        params = {f"w{i}": a for i, a in enumerate(arrays(np.float32))}
        grads = {k: 0.01 * rng.standard_normal(v.shape).astype(np.float32)
                 for k, v in params.items()}
        opt = fo.AdamW(params, lr=1e-3, state_dtype="int8", min_quantized_size=256)
        sched = lrs.CyclicLR(opt, base_lr=1e-4, max_lr=1e-3, step_size_up=500,
                             cycle_momentum=False)

        def step():
            opt.step(grads)
            sched.step()
        return opt, sched, params, step
    if kind == "adamw_bf16_master":   # bfloat16 params, float32 master weights and grads
        params = arrays(ml_dtypes.bfloat16)
        grads = [0.01 * g for g in arrays(np.float32)]
        opt = fo.AdamW(params, lr=1e-3, master_weights=True)
        sched = lrs.LinearLR(opt, start_factor=0.1, total_iters=5000)

        def step():
            opt.step(grads)
            sched.step()
        return opt, sched, None, step
    raise ValueError(kind)


def _snapshot() -> tracemalloc.Snapshot:
    """A tracemalloc snapshot of what is reachable: after a gc pass, and with CPython's type
    attribute cache emptied (it keeps up to 4096 attribute-name strings alive, e.g. numpy's
    dtype names, which would otherwise show as a slowly saturating growth)."""
    gc.collect()
    sys._clear_type_cache()
    return tracemalloc.take_snapshot()


def _measure(interval, size: int, rss_intervals: int, traced_intervals: int) -> dict:
    """Run `interval(size)` (a unit of work that ends at the same point of its cycle each
    time) `rss_intervals` times with RSS sampled after each; then, with tracemalloc on, once
    more at a tenth of the size (so what each interval replaces, state and plans, is traced)
    and `traced_intervals` times at full size, comparing the live allocations from
    fusedoptim's files before and after those. RSS is measured with tracemalloc off: its own
    tables grow with every distinct traceback and would blur a 1 MiB bound."""
    rss = []
    start = time.perf_counter()
    for _ in range(rss_intervals):
        interval(size)
        gc.collect()
        rss.append(_rss())
    rss_wall = time.perf_counter() - start
    assert len(rss) >= WARMUP_INTERVALS - 1 + 2 * RSS_WINDOW, "too few intervals for two windows"
    warm = int(np.median(rss[WARMUP_INTERVALS - 1:WARMUP_INTERVALS - 1 + RSS_WINDOW]))
    end = int(np.median(rss[-RSS_WINDOW:]))
    tracemalloc.start(TRACE_FRAMES)
    interval(max(1, size // 10))
    baseline = _traced(_snapshot())
    for _ in range(traced_intervals):
        interval(size)
    final = _traced(_snapshot())
    tracemalloc.stop()
    diffs = final.compare_to(baseline, "lineno")
    return {
        "rss_wall_s": round(rss_wall, 1),
        "traced_wall_s": round(time.perf_counter() - start - rss_wall, 1),
        "rss_mib": [round(r / 2**20, 2) for r in rss],
        "rss_warmup": warm, "rss_end": end, "rss_growth": end - warm,
        "rss_max_growth": max(rss[WARMUP_INTERVALS - 1:]) - warm,
        "traced_baseline": sum(t.size for t in baseline.traces),
        "traced_growth": sum(d.size_diff for d in diffs),
        "top_diffs": [str(d) for d in diffs[:5]],
    }


def soak(kind: str, steps: int) -> dict:
    """`steps` steps of one kind with a checkpoint round trip every CHECKPOINT_EVERY (RSS
    measured), then about steps // 10 (at least CHECKPOINT_EVERY) more under tracemalloc."""
    import fusedoptim as fo
    opt, sched, params, step = _model(kind)
    path = os.path.join(tempfile.mkdtemp(prefix="fo_soak_"), "ckpt.safetensors")
    done = 0

    def interval(steps: int) -> None:
        nonlocal done
        for _ in range(steps):
            step()
        done += steps
        sd = opt.state_dict()
        opt.load_state_dict(sd)
        del sd
        fo.save(path, opt, scheduler=sched, params=params, extra={"step": done})
        extra = fo.load(path, opt, scheduler=sched, params=params)
        assert extra == {"step": done}, extra

    result = _measure(interval, CHECKPOINT_EVERY, steps // CHECKPOINT_EVERY,
                      max(2, steps // CHECKPOINT_EVERY // 10))
    os.remove(path)
    os.rmdir(os.path.dirname(path))
    return {"kind": kind, "steps": done, "rss_steps": steps, **result,
            "lr": [g["lr"] for g in opt.param_groups]}


def lifecycle(count: int) -> dict:
    """Build, step once, round-trip the state_dicts of and drop `count` (FlatParams arena,
    optimizer, scheduler) triples of rotating kinds (RSS measured; count // 10 more traced):
    each dies and the memory returns."""
    import ml_dtypes

    import fusedoptim as fo
    from fusedoptim import lr_scheduler as lrs

    shapes = {"W": (32, 16), "b": (16,), "emb": (300, 16)}
    alive: weakref.WeakSet = weakref.WeakSet()
    built = not_freed_by_refcount = 0

    def one(kind: int) -> None:
        # gc off, so an object that dies only in a cycle collection is counted below
        gc.disable()
        try:
            build_and_drop(kind)
        finally:
            gc.enable()

    def build_and_drop(kind: int) -> None:
        nonlocal not_freed_by_refcount
        arena = fo.FlatParams(shapes, ml_dtypes.bfloat16 if kind == 3 else np.float32)
        arena.flat_grad[:] = 0.5
        if kind == 0:
            opt = fo.AdamW(arena, lr=1e-3)
            sched = lrs.OneCycleLR(opt, max_lr=1e-2, total_steps=10)
        elif kind == 1:
            opt = fo.SGD(arena, lr=0.1, momentum=0.9)
            sched = lrs.SequentialLR(opt, [lrs.LinearLR(opt, total_iters=2),
                                           lrs.ExponentialLR(opt, gamma=0.9)], milestones=[2])
        elif kind == 2:
            opt = fo.AdamW(arena, lr=1e-3, state_dtype="int8", min_quantized_size=256)
            sched = lrs.CosineAnnealingLR(opt, T_max=10)
        else:
            opt = fo.AdamW(arena, lr=1e-3, master_weights=True)
            sched = lrs.ReduceLROnPlateau(opt, patience=0)
        opt.step()
        sched.step(1.0) if kind == 3 else sched.step()
        opt.load_state_dict(opt.state_dict())
        sched.load_state_dict(sched.state_dict())
        refs = [weakref.ref(o) for o in (arena, opt, sched)]
        alive.update((arena, opt, sched))
        del arena, opt, sched
        not_freed_by_refcount += sum(r() is not None for r in refs)

    per_interval = max(1, count // 10)

    def interval(n: int) -> None:
        nonlocal built
        for _ in range(n):
            one(built % 4)
            built += 1

    result = _measure(interval, per_interval, 10, 1)
    return {"built": built, "rss_built": 10 * per_interval, "alive_after_collect": len(alive),
            "not_freed_by_refcount": not_freed_by_refcount, **result}


# -- the tests (run the worker in a subprocess) --------------------------------------------------

def _run_worker(*args: str, timeout: float) -> dict:
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "passive"))
    out = subprocess.run([sys.executable, os.path.abspath(__file__), *args],
                         capture_output=True, text=True, env=env, timeout=timeout)
    assert out.returncode == 0, out.stderr[-4000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(result, indent=1))       # the numbers, visible with pytest -s
    return result


@pytest.mark.parametrize("kind", KINDS)
def test_soak_memory_is_flat(kind):
    r = _run_worker("soak", kind, str(SOAK_STEPS), timeout=max(600, SOAK_STEPS * 0.05))
    assert r["rss_steps"] == SOAK_STEPS
    assert r["rss_growth"] < RSS_LIMIT, r
    assert r["traced_growth"] <= TRACED_LIMIT, r


def test_lifecycle_memory_returns():
    r = _run_worker("lifecycle", str(LIFECYCLE), timeout=max(600, LIFECYCLE * 0.1))
    assert r["rss_built"] == LIFECYCLE
    assert r["alive_after_collect"] == 0, r
    # No reference cycles: a dropped optimizer's state (often hundreds of MB) is freed at once,
    # not at some later gc pass.
    assert r["not_freed_by_refcount"] == 0, r
    assert r["rss_growth"] < RSS_LIMIT, r
    assert r["traced_growth"] <= TRACED_LIMIT, r


if __name__ == "__main__":
    what, *rest = sys.argv[1:]
    if what == "soak":
        res = soak(rest[0], int(rest[1]))
    elif what == "lifecycle":
        res = lifecycle(int(rest[0]))
    else:
        raise SystemExit(f"usage: {sys.argv[0]} soak KIND STEPS | lifecycle COUNT")
    print(json.dumps(res))
