"""The distributed checks, run on every rank under mpirun by tests/test_distributed.py:

    mpirun -n N python -m mpi4py tests/mpi_worker.py DIR [save|load]

Every check compares against a plain single-process optimizer that each rank runs itself on
the mean of all ranks' grads (each rank can draw every rank's grads: they come from seeded
generators). A failed check raises, and ``-m mpi4py`` then aborts every rank, so the launch
fails instead of hanging. Rank 0 prints one "ok <check>" line per passed check.

With 2 ranks the mean of two grads is exact whatever the order, so everything is compared
bitwise. With 3 ranks MPI's sum order is its own: the equivalence runs then use grads on a
grid of multiples of 2**-10 with |g| <= 2, whose sums are exact in float32 in any order (so
those stay bitwise too), and one run with normal grads is compared within a tolerance.
``save`` (3 ranks) writes a sharded checkpoint to DIR; ``load`` (2 ranks) resumes from it;
``die``: one rank exits mid-training (the launch must fail, not hang).
"""

import os
import pickle
import sys

import numpy as np

import fusedoptim as fo
from fusedoptim.distributed import ZeroRedundancyOptimizer, allreduce_, clip_grad_norm_
from fusedoptim.distributed.zero import shardable
from mpi4py import MPI

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
DIR = sys.argv[1]
MODE = sys.argv[2] if len(sys.argv) > 2 else ""

# 42108 elements: 3 work units of 16384, split 2/1 (2 ranks) or 1/1/1 (3 ranks), so the first
# param (30000) is cut between ranks 0 and 1; the small ones share a unit.
SHAPES = [(150, 200), (3000,), (70, 130), (7,), (1,)]
STEPS = 50

OPTIMIZERS = [
    (fo.SGD, dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=0.01)),
    (fo.Adam, dict(lr=1e-3, amsgrad=True)),
    (fo.AdamW, dict(lr=1e-3, weight_decay=0.1)),
    (fo.Adadelta, dict(lr=1.0)),
    (fo.Adagrad, dict(lr=0.01)),
    (fo.Adamax, dict(lr=2e-3)),
    (fo.ASGD, dict(lr=0.01, t0=5.0)),
    (fo.NAdam, dict(lr=2e-3)),
    (fo.RAdam, dict(lr=1e-3)),
    (fo.RMSprop, dict(lr=1e-3, momentum=0.5, centered=True)),
    (fo.Rprop, dict(lr=1e-3)),
    (fo.Lion, dict(lr=1e-4, weight_decay=0.1)),
    (fo.SignSGD, dict(lr=1e-3)),
    (fo.LAMB, dict(lr=1e-2, weight_decay=0.01)),
    (fo.LARS, dict(lr=0.1, momentum=0.9, weight_decay=1e-4)),
    (fo.Prodigy, dict(weight_decay=0.01, use_bias_correction=True)),
]
# Every other optimizer class ZeroRedundancyOptimizer shards (new ones included), with its
# defaults; the whole-tensor steps are refused (check_bad_input). Muon takes matrices only:
# check_muon.
_LISTED = {cls for cls, _ in OPTIMIZERS}
OPTIMIZERS += [(cls, {}) for cls in sorted({c for c in vars(fo).values()
                                            if isinstance(c, type) and shardable(c)},
                                           key=lambda c: c.__name__)
               if cls not in _LISTED and not issubclass(cls, fo.Muon)]

# Muon: wide, tall and square matrices, a square shape again after others (the plain Muon
# stacks it with the first, ZeRO's line does not), 61432 elements in 4 work units: param 1
# is cut between ranks 0 and 1 at 2 ranks; params 0 and 1 are both cut at 3 ranks.
MUON_SHAPES = [(150, 200), (300, 64), (64, 64), (96, 40), (64, 64), (10, 20)]
MUON_KW = dict(lr=0.02, weight_decay=0.01)


_T0 = [MPI.Wtime()]


def say(msg):
    if rank == 0:
        now = MPI.Wtime()
        print(f"{msg} [{now - _T0[0]:.1f} s]", flush=True)
        _T0[0] = now


def params0(dtype=np.float32, shapes=SHAPES, seed=0):
    rng = np.random.default_rng(seed)
    return [np.asarray(rng.standard_normal(s), dtype=dtype) for s in shapes]


_CACHE = {}


#: a constant added to every grad of these optimizers (a multiple of 2**-10, so the grid
#: stays exact): Prodigy's D grows only when the grads keep a direction (on pure noise it
#: stays at d0, and the equivalence would not exercise it)
GRAD_BIAS = {fo.Prodigy: 0.25}


def grads_of(r, step, dtype=np.float32, shapes=SHAPES, grid=None, tag=0, bias=0.0):
    """Rank r's grads at `step` (fresh copies), plus `bias`; on the exact grid when asked
    (see the module doc)."""
    grid = (size > 2) if grid is None else grid
    key = (r, step, np.dtype(dtype).str, tuple(shapes), grid, tag)
    if key not in _CACHE:
        _CACHE[key] = _draw(r, step, dtype, shapes, grid, tag)
    return [g + g.dtype.type(bias) if bias else g.copy() for g in _CACHE[key]]


def _draw(r, step, dtype, shapes, grid, tag):
    rng = np.random.default_rng([r, step, tag])
    out = []
    for s in shapes:
        if grid:
            out.append(np.asarray(rng.integers(-2048, 2049, size=s) * 2.0 ** -10, dtype=dtype))
        else:
            out.append(np.asarray(rng.standard_normal(s), dtype=dtype))
    return out


def mean_grads(step, **kw):
    every = [grads_of(r, step, **kw) for r in range(size)]
    out = []
    for k in range(len(every[0])):
        acc = every[0][k].copy()
        for r in range(1, size):
            acc += every[r][k]
        out.append(acc / acc.dtype.type(size))
    return out


def same_everywhere(arrays, what):
    """The arrays are bitwise identical on every rank."""
    digest = [a.tobytes() for a in arrays]
    first = comm.bcast(digest, root=0)
    bad = int(any(a != b for a, b in zip(digest, first)))
    if comm.allreduce(bad, op=MPI.MAX):
        raise AssertionError(f"{what}: params differ between ranks")


def assert_equal(a_list, b_list, what):
    for k, (a, b) in enumerate(zip(a_list, b_list)):
        if not np.array_equal(a, b, equal_nan=True):
            d = np.max(np.abs(a.astype(np.float64) - b))
            raise AssertionError(f"rank {rank}: {what}: param {k} differs (max |diff| {d})")


def check_equivalence():
    """Every optimizer, stages 1 and 2: ZeRO equals one process stepping the mean grad,
    bitwise, at every step; params identical on all ranks."""
    for cls, kw in OPTIMIZERS:
        for stage in (1, 2):
            ps = params0()
            ref_ps = [p.copy() for p in ps]
            zero = ZeroRedundancyOptimizer(ps, cls, stage=stage, **kw)
            ref = cls(ref_ps, **kw)
            bias = GRAD_BIAS.get(cls, 0.0)
            for step in range(STEPS):
                zero.step(grads_of(rank, step, bias=bias))
                ref.step(mean_grads(step, bias=bias))
                assert_equal(ps, ref_ps, f"{cls.__name__} stage {stage} step {step}")
            same_everywhere(ps, f"{cls.__name__} stage {stage}")
            if cls is fo.Prodigy:
                assert ref.param_groups[0]["d"] > 100 * ref.param_groups[0]["d0"], \
                    "D hardly moved: the equivalence would not exercise it"
    say(f"ok equivalence ({len(OPTIMIZERS)} optimizers x stages 1, 2 x {STEPS} steps)")


def check_muon():
    """Muon, stages 1 and 2, float32 and float64: bitwise one process stepping the mean grad
    at every step of 50 (matrices cut between ranks: their norms are folded from every
    rank's partials, their iteration runs whole on each rank that owns a piece), params
    identical on every rank after every step; float64 in two groups of different lr, with
    a scheduler. Along the way: a None grad on every rank (param 1, cut between ranks, on
    step 7; every param on step 20), global clipping (float32), grad_scale. Then Keller
    Jordan's adjust_lr_fn and torch's bfloat16 numerics, a layout where ranks own nothing,
    add_param_group, and MuonWithAuxAdam's two parts in two ZeRO optimizers."""
    cut = [t for t, _, _ in ZeroRedundancyOptimizer(params0(shapes=MUON_SHAPES), fo.Muon)
           ._groups[0].pieces]
    spans = comm.allgather(cut)
    assert any(t in spans[r + 1] for r in range(size - 1) for t in spans[r]), spans
    for dtype in (np.float32, np.float64):
        for stage in (1, 2):
            ps = params0(dtype, shapes=MUON_SHAPES)
            ref_ps = [p.copy() for p in ps]
            if dtype == np.float64:
                groups = [{"params": ps[:3]}, {"params": ps[3:], "lr": 0.005}]
                ref_groups = [{"params": ref_ps[:3]}, {"params": ref_ps[3:], "lr": 0.005}]
            else:
                groups, ref_groups = ps, ref_ps
            zero = ZeroRedundancyOptimizer(groups, fo.Muon, stage=stage, **MUON_KW)
            ref = fo.Muon(ref_groups, **MUON_KW)
            sched = fo.lr_scheduler.StepLR(zero, step_size=10, gamma=0.5)
            ref_sched = fo.lr_scheduler.StepLR(ref, step_size=10, gamma=0.5)
            for step in range(STEPS):
                g = grads_of(rank, step, dtype=dtype, shapes=MUON_SHAPES)
                mg = mean_grads(step, dtype=dtype, shapes=MUON_SHAPES)
                skip = {7: [1], 20: range(len(MUON_SHAPES))}.get(step, [])
                for k in skip:
                    g[k] = mg[k] = None
                # clipped in the one-group runs: with several groups the ZeRO norm equals
                # fo.clip_grad_norm_'s up to rounding only (docs/distributed.md)
                clip = 1.0 if step % 5 == 3 and groups is ps else None
                # (not with clip: the ZeRO norm is then of the grads / grad_scale)
                scale = 4.0 if step % 7 == 5 and clip is None else None
                zero.step(g, max_grad_norm=clip, grad_scale=scale)
                if clip is not None:
                    norm = fo.clip_grad_norm_([x for x in mg if x is not None], clip)
                    assert zero.last_grad_norm == norm, (zero.last_grad_norm, norm)
                ref.step(mg, grad_scale=scale)
                sched.step()
                ref_sched.step()
                what = f"Muon {np.dtype(dtype)} stage {stage} step {step}"
                assert_equal(ps, ref_ps, what)
                same_everywhere(ps, what)
    for kw, steps in ((dict(adjust_lr_fn="match_rms_adamw", nesterov=False), 10),
                      (dict(ns_dtype="bfloat16"), 5)):
        ps = params0(shapes=MUON_SHAPES)
        ref_ps = [p.copy() for p in ps]
        zero = ZeroRedundancyOptimizer(ps, fo.Muon, stage=2, **MUON_KW, **kw)
        ref = fo.Muon(ref_ps, **MUON_KW, **kw)
        for step in range(steps):
            zero.step(grads_of(rank, step, shapes=MUON_SHAPES))
            ref.step(mean_grads(step, shapes=MUON_SHAPES))
            assert_equal(ps, ref_ps, f"Muon {kw} step {step}")
    # one work unit: every rank but one owns nothing and still takes part in the gathered
    # norms (its stand-in), so nobody waits; a zero-size matrix between the other two (it
    # has no piece, yet it lies inside the owner's run of matrices)
    small_shapes = [(40, 30), (0, 8), (30, 8)]
    small = params0(shapes=small_shapes)
    ref_small = [p.copy() for p in small]
    zs = ZeroRedundancyOptimizer(small, fo.Muon, **MUON_KW)
    assert comm.allreduce(int(bool(zs._groups[0].pieces))) == 1
    ref = fo.Muon(ref_small, **MUON_KW)
    for step in range(3):
        zs.step(grads_of(rank, step, shapes=small_shapes))
        ref.step(mean_grads(step, shapes=small_shapes))
        assert_equal(small, ref_small, f"Muon on one unit, step {step}")
    # add_param_group: the new group gets a Muon shard of its own
    ps = params0(shapes=MUON_SHAPES)
    ref_ps = [p.copy() for p in ps]
    zero = ZeroRedundancyOptimizer(ps[:3], fo.Muon, stage=1, **MUON_KW)
    ref = fo.Muon(ref_ps[:3], **MUON_KW)
    for step in range(5):
        if step == 2:
            zero.add_param_group({"params": ps[3:], "lr": 0.005})
            ref.add_param_group({"params": ref_ps[3:], "lr": 0.005})
        n = 3 if step < 2 else len(ps)
        zero.step(grads_of(rank, step, shapes=MUON_SHAPES)[:n])
        ref.step(mean_grads(step, shapes=MUON_SHAPES)[:n])
        assert_equal(ps, ref_ps, f"Muon add_param_group, step {step}")
    # MuonWithAuxAdam is refused; the documented way: its two parts in two ZeRO optimizers
    aux = MUON_SHAPES[:3] + [(3000,), (7,)]
    ps = params0(shapes=aux)
    ref_ps = [p.copy() for p in ps]
    hidden = ZeroRedundancyOptimizer(ps[:3], fo.Muon, stage=2,
                                     **fo.optim.muon.AUX_MUON_DEFAULTS)
    rest = ZeroRedundancyOptimizer(ps[3:], fo.AdamW, stage=2, **fo.optim.muon.AUX_ADAM_DEFAULTS)
    ref = fo.MuonWithAuxAdam([{"params": ref_ps[:3], "use_muon": True},
                              {"params": ref_ps[3:], "use_muon": False}])
    for step in range(5):
        g = grads_of(rank, step, shapes=aux)
        hidden.step(g[:3])
        rest.step(g[3:])
        ref.step(mean_grads(step, shapes=aux))
        assert_equal(ps, ref_ps, f"MuonWithAuxAdam as two ZeRO optimizers, step {step}")
    say(f"ok Muon bitwise (float32, float64 x stages 1, 2 x {STEPS} steps; matrices cut "
        f"between ranks {spans}; None grads, clip, grad_scale, StepLR, two groups; "
        f"match_rms_adamw; bfloat16 numerics; ranks owning nothing; add_param_group; "
        f"MuonWithAuxAdam as two ZeRO optimizers)")


def check_lamb_spans_shards():
    """LAMB's per-tensor norms: tensor 0 is cut between ranks, so its norms are the gathered
    partials; a norm from this rank's piece alone would give another trust ratio."""
    ps = params0()
    zero = ZeroRedundancyOptimizer(ps, fo.LAMB, lr=1e-2)
    pieces = zero._groups[0].shards.pieces
    owners = [r for r in range(size) if any(t == 0 for t, _, _ in pieces[r])]
    assert len(owners) > 1, pieces
    # One work unit: every rank but one owns nothing, and still takes part in the
    # gathered norms (a stand-in plan), so nobody waits.
    for cls in (fo.LAMB, fo.LARS):
        small = params0(shapes=[(40, 30), (30,)])
        ref_small = [p.copy() for p in small]
        zs = ZeroRedundancyOptimizer(small, cls, lr=1e-2)
        assert comm.allreduce(int(bool(zs._groups[0].pieces))) == 1
        ref = cls(ref_small, lr=1e-2)
        for step in range(3):
            zs.step(grads_of(rank, step, shapes=[(40, 30), (30,)]))
            ref.step(mean_grads(step, shapes=[(40, 30), (30,)]))
            assert_equal(small, ref_small, f"{cls.__name__} on one unit, step {step}")
    say("ok LAMB tensor 0 spans ranks " + str(owners) + "; LAMB/LARS on ranks owning nothing")


def check_none_grads():
    """A grad of None skips its param, as in torch: bitwise the plain optimizer stepping the
    mean grads with the same Nones, for element-wise, gathered-norm (LAMB: tensor 0 is cut
    between ranks) and Prodigy steps, stages 1 and 2; step counts of skipped params stay.
    Params 0 and 2 (cut between ranks, or owned by one rank) skip on alternate steps; on
    step 4 every param of the group has None. A None on one rank only raises on every rank
    and changes nothing."""
    for cls, kw in ((fo.AdamW, dict(lr=1e-3)), (fo.LAMB, dict(lr=1e-2)),
                    (fo.Prodigy, dict(weight_decay=0.01, d0=1e-2))):
        for stage in (1, 2):
            ps = params0()
            ref_ps = [p.copy() for p in ps]
            zero = ZeroRedundancyOptimizer(ps, cls, stage=stage, **kw)
            ref = cls(ref_ps, **kw)
            for step in range(8):
                skip = set(range(len(SHAPES))) if step == 4 else {step % 2 * 2}
                g, mg = grads_of(rank, step), mean_grads(step)
                for k in skip:
                    g[k] = mg[k] = None
                clip = 0.5 if step % 3 == 1 else None
                zero.step(g, max_grad_norm=clip)
                if clip is not None:
                    norm = fo.clip_grad_norm_([x for x in mg if x is not None], clip)
                    assert zero.last_grad_norm == norm, (zero.last_grad_norm, norm)
                ref.step(mg)
                assert_equal(ps, ref_ps, f"None grads {cls.__name__} stage {stage} step {step}")
            same_everywhere(ps, f"None grads {cls.__name__} stage {stage}")
            zero.consolidate_state_dict(to=0)
            if rank == 0:
                want = ref.state_dict()
                got = zero.state_dict()
                assert got["param_groups"] == want["param_groups"]
                for i, st in want["state"].items():
                    for k, x in st.items():
                        assert np.array_equal(got["state"][i][k], x), (cls, i, k)
    for stage in (1, 2):
        ps = params0()
        zero = ZeroRedundancyOptimizer(ps, fo.Adam, lr=1e-3, stage=stage)
        zero.step(grads_of(rank, 0))
        before = [p.copy() for p in ps]
        state = {i: {k: np.copy(x) for k, x in st.items()} for i, st in zero.state.items()}
        g = grads_of(rank, 1)
        if rank == size - 1:
            g[1] = None
        raises(ValueError, ["grads[1]", f"None on rank(s) [{size - 1}]", "every rank"],
               zero.step, g)
        assert_equal(ps, before, f"params after a disagreeing None, stage {stage}")
        for i, st in zero.state.items():
            for k, x in st.items():
                assert np.array_equal(x, state[i][k]), (stage, i, k)
        zero.step(grads_of(rank, 1))        # and the next step goes on normally
    say("ok None grads: skipped as in torch (stages 1, 2; AdamW, LAMB, Prodigy; clipped), "
        "and a None on one rank raises on every rank")


def check_prodigy():
    """Prodigy's D estimate sums over every element of every rank (two gathered sums):
    bitwise the plain Prodigy stepping the mean grad, its D state included (covered with
    the other optimizers by check_equivalence); here: on a layout where a rank owns
    nothing (one work unit), checkpoints (the D state in param_groups), and one group
    only."""
    shapes = [(40, 30), (30,)]
    small = params0(shapes=shapes)
    ref_small = [p.copy() for p in small]
    zs = ZeroRedundancyOptimizer(small, fo.Prodigy, stage=2, d0=1e-2)
    ref = fo.Prodigy(ref_small, d0=1e-2)
    for step in range(6):
        zs.step(grads_of(rank, step, shapes=shapes, bias=0.25))
        ref.step(mean_grads(step, shapes=shapes, bias=0.25))
        assert_equal(small, ref_small, f"Prodigy on one unit, step {step}")
        assert zs.param_groups[0]["d"] == ref.param_groups[0]["d"]
    assert ref.param_groups[0]["d"] > 1e-2, "D never moved: the check would be idle"
    zs.consolidate_state_dict(to=0)
    if rank == 0:
        sd = zs.state_dict()
        assert sd["param_groups"] == ref.state_dict()["param_groups"]
        plain = fo.Prodigy([p.copy() for p in small], d0=1e-2)
        plain.load_state_dict(sd)
    # a plain Prodigy's checkpoint into ZeRO: the D state goes on from where it was
    ps2 = [p.copy() for p in ref_small]
    z2 = ZeroRedundancyOptimizer(ps2, fo.Prodigy, stage=1, d0=1e-2)
    z2.load_state_dict(ref.state_dict())
    for step in range(6, 9):
        z2.step(grads_of(rank, step, shapes=shapes, bias=0.25))
        ref.step(mean_grads(step, shapes=shapes, bias=0.25))
        assert_equal(ps2, ref_small, f"Prodigy resumed, step {step}")
    raises(ValueError, ["Prodigy", "one param group"], ZeroRedundancyOptimizer,
           [{"params": params0()[:2]}, {"params": params0()[2:]}], fo.Prodigy)
    say("ok Prodigy: D from gathered sums, on a rank owning nothing, checkpoints")


def check_normal_grads_tolerance():
    """3+ ranks, normal grads: MPI's sum order differs from NumPy's, so the mean differs by
    an ulp here and there. float32 AdamW and LAMB over 50 steps then stay within rtol 1e-5,
    atol 1e-6: an ulp of the grad moves the update by about an ulp of itself (Adam's update
    is scale-invariant in g), so 50 steps drift by a few ulps of lr-sized steps (~1e-9), far
    below the bound; a wrong shard or a missed rank is off by ~lr = 1e-3. Muon (lr 0.02):
    its update is orthogonalized, so an ulp of the grad moves it by an ulp times the
    iteration's gain (up to a = 3.4 per step on small singular values); measured at 3 and 4
    ranks: at most 7e-7, 9% of the bound where it is tightest; a wrong norm or piece moves
    a step (~lr * 0.1 = 2e-3) by its own size."""
    for cls, kw, shapes in ((fo.AdamW, dict(lr=1e-3, weight_decay=0.1), SHAPES),
                            (fo.LAMB, dict(lr=1e-3), SHAPES),
                            (fo.Prodigy, dict(weight_decay=0.01, use_bias_correction=True),
                             SHAPES),
                            (fo.Muon, MUON_KW, MUON_SHAPES)):
        ps = params0(shapes=shapes)
        ref_ps = [p.copy() for p in ps]
        zero = ZeroRedundancyOptimizer(ps, cls, stage=2, **kw)
        ref = cls(ref_ps, **kw)
        bias = GRAD_BIAS.get(cls, 0.0)
        for step in range(STEPS):
            zero.step(grads_of(rank, step, shapes=shapes, grid=False, bias=bias))
            ref.step(mean_grads(step, shapes=shapes, grid=False, bias=bias))
        if os.environ.get("ZERO_SHOW_DRIFT") and rank == 0:
            print(cls.__name__, max(float(np.max(np.abs(a.astype(np.float64) - b)))
                                    for a, b in zip(ps, ref_ps)),
                  zero.param_groups[0].get("d"), ref.param_groups[0].get("d"))
        for a, b in zip(ps, ref_ps):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        if cls is fo.Prodigy:
            # D is a ratio of two sums over every element: an ulp of the mean grad moves it
            # by about an ulp of itself (measured: see docs/distributed.md)
            assert ref.param_groups[0]["d"] > 1e-4, "D hardly moved: the check would be idle"
            np.testing.assert_allclose(zero.param_groups[0]["d"], ref.param_groups[0]["d"],
                                       rtol=1e-5)
        same_everywhere(ps, f"{cls.__name__} normal grads")
    say("ok normal grads within float32 tolerance")


def check_flat_groups_scheduler_scale():
    """A FlatParams arena (reduce-scatter and all-gather in place) and a second group of
    another lr, a scheduler on the ZeRO optimizer, and grad_scale (a power of two, as
    GradScaler's: exact, so bitwise)."""
    names = {f"w{k}": s for k, s in enumerate(SHAPES)}
    shapes = SHAPES + [(20000,)]
    # small ring messages: several per block, and blocks of unequal sizes (the ring must
    # pair every call with its neighbour's)
    from fusedoptim.distributed import _collectives
    chunk, _collectives.RING_CHUNK = _collectives.RING_CHUNK, 1000
    for stage, how in ((1, "ring"), (1, "mpi"), (2, "ring"), (2, "mpi")):
        arena = fo.FlatParams(names)
        for k, p in zip(names, params0()):
            arena.params[k][...] = p
        extra = params0(shapes=[(20000,)], seed=3)
        ref_ps = [p.copy() for p in arena.params.values()] + [extra[0].copy()]
        groups = [{"params": arena}, {"params": extra, "lr": 5e-4}]
        zero = ZeroRedundancyOptimizer(groups, fo.AdamW, stage=stage, lr=1e-3,
                                       reduce_scatter=how)
        ref = fo.AdamW([{"params": ref_ps[:-1]}, {"params": ref_ps[-1:], "lr": 5e-4}],
                       lr=1e-3)
        sched = fo.lr_scheduler.StepLR(zero, step_size=5, gamma=0.5)
        ref_sched = fo.lr_scheduler.StepLR(ref, step_size=5, gamma=0.5)
        for step in range(20):
            g = grads_of(rank, step, shapes=shapes)
            for k, gk in zip(names, g):
                arena.grads[k][...] = gk
            scale = 4.0 if step % 3 == 0 else None
            zero.step(list(arena.grads.values()) + [g[-1]], grad_scale=scale)
            ref.step(mean_grads(step, shapes=shapes), grad_scale=scale)
            sched.step()
            ref_sched.step()
            assert_equal(list(arena.params.values()) + extra, ref_ps,
                         f"arena stage {stage} step {step}")
        same_everywhere(list(arena.params.values()) + extra, f"arena stage {stage}")
        assert zero.param_groups[1]["lr"] == ref.param_groups[1]["lr"] == 5e-4 * 0.5 ** 4
    _collectives.RING_CHUNK = chunk
    say("ok FlatParams arena, two groups, StepLR, grad_scale, reduce_scatter ring and mpi")


def check_add_param_group():
    """add_param_group: a collective; the new group is sharded and steps like the others;
    a group that differs between ranks raises on every rank."""
    for stage in (1, 2):
        ps = params0()
        ref_ps = [p.copy() for p in ps]
        zero = ZeroRedundancyOptimizer(ps[:2], fo.AdamW, stage=stage, lr=1e-3)
        ref = fo.AdamW(ref_ps[:2], lr=1e-3)
        for step in range(8):
            if step == 3:
                zero.add_param_group({"params": ps[2:], "lr": 5e-4})
                ref.add_param_group({"params": ref_ps[2:], "lr": 5e-4})
            g, mg = grads_of(rank, step), mean_grads(step)
            n = 2 if step < 3 else len(ps)
            zero.step(g[:n])
            ref.step(mg[:n])
            assert_equal(ps, ref_ps, f"add_param_group stage {stage} step {step}")
    extra = [np.zeros(10 + (rank == size - 1), dtype=np.float32)]
    raises(ValueError, ["add_param_group", "disagree"], zero.add_param_group,
           {"params": extra})
    say("ok add_param_group, and a mismatched one raises on every rank")


def check_clip():
    """step(max_grad_norm=...) equals fusedoptim.clip_grad_norm_ of the mean grad, then the
    step, bitwise; last_grad_norm is that norm. step() without grads reads the arena."""
    names = {f"w{k}": s for k, s in enumerate(SHAPES)}
    for stage in (1, 2):
        arena = fo.FlatParams(names)
        for k, p in zip(names, params0()):
            arena.params[k][...] = p
        ref_ps = [p.copy() for p in arena.params.values()]
        zero = ZeroRedundancyOptimizer(arena, fo.LAMB, stage=stage, lr=1e-2)
        ref = fo.LAMB(ref_ps, lr=1e-2)
        for step in range(10):
            for k, gk in zip(names, grads_of(rank, step)):
                arena.grads[k][...] = gk
            max_norm = (0.5, 1e9)[step % 2]
            zero.step(max_grad_norm=max_norm)
            mg = mean_grads(step)
            norm = fo.clip_grad_norm_(mg, max_norm)
            assert zero.last_grad_norm == norm, (zero.last_grad_norm, norm)
            ref.step(mg)
            assert_equal(list(arena.params.values()), ref_ps, f"clip stage {stage} {step}")
        # With grad_scale: the norm is of grads / grad_scale; the kernel's (1/s) * g differs
        # from the division by an ulp, so float32 within rtol 1e-6 over these 3 steps.
        for step in range(10, 13):
            for k, gk in zip(names, grads_of(rank, step)):
                arena.grads[k][...] = gk
            zero.step(max_grad_norm=0.5, grad_scale=3.0)
            mg = [m / np.float32(3.0) for m in mean_grads(step)]
            norm = fo.clip_grad_norm_(mg, 0.5)
            np.testing.assert_allclose(zero.last_grad_norm, norm, rtol=1e-6)
            ref.step(mg)
            for a, b in zip(arena.params.values(), ref_ps):
                np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    say("ok max_grad_norm: global clip bitwise, last_grad_norm, with grad_scale")


# int8 state: param 0 (20000, quantized) leaves a 3616-element piece, below
# min_quantized_size, on the next rank; param 2 (3000, float32 state) is cut at 768 between
# units 1 and 2 (ranks 1 and 2 of 3).
INT8_SHAPES = [(20000,), (12000,), (3000,), (100, 50)]


def check_int8():
    """int8 state, and blockwise int4 (two codes per byte: pieces start on even elements):
    each piece quantized as its whole param; bitwise, and the consolidated state_dict is the
    plain optimizer's (codes, absmax, map); a plain one loads back."""
    int4 = dict(state_dtype="int4", rank1_normalization=False)
    for cls, kw in ((fo.AdamW, dict(lr=1e-3, weight_decay=0.1, state_dtype="int8")),
                    (fo.Lion, dict(lr=1e-4, state_dtype="int8")),
                    (fo.AdamW, dict(lr=1e-3, weight_decay=0.1, **int4)),
                    # gathered norms over quantized state: every param quantized
                    (fo.LAMB, dict(lr=1e-2, state_dtype="int8", min_quantized_size=0)),
                    (fo.LARS, dict(lr=0.1, momentum=0.9, state_dtype="int8",
                                   min_quantized_size=0)),
                    (fo.LAMB, dict(lr=1e-2, min_quantized_size=0, **int4))):
        for stage in (1, 2):
            ps = params0(shapes=INT8_SHAPES)
            ref_ps = [p.copy() for p in ps]
            zero = ZeroRedundancyOptimizer(ps, cls, stage=stage, **kw)
            ref = cls(ref_ps, **kw)
            for step in range(10):
                zero.step(grads_of(rank, step, shapes=INT8_SHAPES))
                ref.step(mean_grads(step, shapes=INT8_SHAPES))
                assert_equal(ps, ref_ps, f"{kw['state_dtype']} {cls.__name__} stage {stage} "
                                         f"step {step}")
            zero.consolidate_state_dict(to=size - 1)
            want = ref.state_dict()
            if rank == size - 1:
                sd = zero.state_dict()
                assert sd["state"].keys() == want["state"].keys()
                for i, st in want["state"].items():
                    assert st.keys() == sd["state"][i].keys(), (st.keys(), sd["state"][i].keys())
                    for k, x in st.items():
                        assert np.array_equal(sd["state"][i][k], x), (i, k)
            zero2 = ZeroRedundancyOptimizer([p.copy() for p in ref_ps], cls, stage=stage, **kw)
            zero2.load_state_dict(want)
            zero2.consolidate_state_dict(to=0)
            if rank == 0:
                for i, st in want["state"].items():
                    for k, x in st.items():
                        assert np.array_equal(zero2.state_dict()["state"][i][k], x), (i, k)
    # LAMB with int8 state and the default min_quantized_size: the small params in a group
    # of their own (float32 state), the large ones quantized
    for stage in (1, 2):
        ps = params0(shapes=INT8_SHAPES)
        ref_ps = [p.copy() for p in ps]
        zero = ZeroRedundancyOptimizer([{"params": ps[:2] + ps[3:]}, {"params": ps[2:3]}],
                                       fo.LAMB, stage=stage, lr=1e-2, state_dtype="int8")
        ref = fo.LAMB([{"params": ref_ps[:2] + ref_ps[3:]}, {"params": ref_ps[2:3]}],
                      lr=1e-2, state_dtype="int8")
        for step in range(6):
            g, mg = grads_of(rank, step, shapes=INT8_SHAPES), mean_grads(step, shapes=INT8_SHAPES)
            zero.step(g[:2] + g[3:] + g[2:3])
            ref.step(mg[:2] + mg[3:] + mg[2:3])
            assert_equal(ps, ref_ps, f"int8 LAMB in two groups, stage {stage} step {step}")
    say("ok int8 and int4 state: bitwise, consolidated and loaded (with LAMB and LARS too)")


def check_bfloat16_params():
    """bfloat16 params with float32 master weights (in each rank's state) and float32 grads:
    the params all-gathered as 16-bit words, bitwise the plain optimizer's."""
    import ml_dtypes
    bf16 = np.dtype(ml_dtypes.bfloat16)
    for stage in (1, 2):
        ps = [p.astype(bf16) for p in params0()]
        ref_ps = [p.copy() for p in ps]
        zero = ZeroRedundancyOptimizer(ps, fo.AdamW, stage=stage, lr=1e-3)
        ref = fo.AdamW(ref_ps, lr=1e-3)
        for step in range(10):
            zero.step(grads_of(rank, step))
            ref.step(mean_grads(step))
            assert_equal(ps, ref_ps, f"bfloat16 stage {stage} step {step}")
        same_everywhere(ps, f"bfloat16 stage {stage}")
    say("ok bfloat16 params, float32 master weights")


def check_skip_nonfinite():
    """A NaN on one rank only: every rank skips, nothing changes, skipped_steps counts."""
    for stage in (1, 2):
        ps = params0()
        zero = ZeroRedundancyOptimizer(ps, fo.Adam, stage=stage, lr=1e-3, skip_nonfinite=True)
        ref_ps = [p.copy() for p in ps]
        ref = fo.Adam(ref_ps, lr=1e-3)
        for step in range(6):
            g = grads_of(rank, step)
            if step == 3 and rank == size - 1:
                g[2][5, 7] = np.nan
            took = zero.step(g)
            if step == 3:
                assert took is False and zero.skipped_steps == 1
            else:
                assert took is True
                ref.step(mean_grads(step))
            assert_equal(ps, ref_ps, f"skip_nonfinite stage {stage} step {step}")
    say("ok skip_nonfinite: a NaN on one rank skips on every rank")


def raises(exc, words, fn, *args, **kw):
    try:
        fn(*args, **kw)
    except exc as e:
        for w in words:
            assert w in str(e), (w, str(e))
    else:
        raise AssertionError(f"{fn.__name__}{args} did not raise {exc.__name__}")


def check_bad_input():
    """Every bad argument raises on every rank before any collective (so no rank waits),
    naming the argument and the value, and leaves params and state as they were."""
    Z = ZeroRedundancyOptimizer
    # Muon's own error for a 1-D param (params[1]), on every rank
    raises(ValueError, ["Muon only supports 2-D parameters", "params[1]", "(3000,)"], Z,
           params0(), fo.Muon)
    raises(ValueError, ["Muon only supports 2-D parameters", "params[2]", "(5,)"],
           Z(params0(shapes=MUON_SHAPES[:1]), fo.Muon).add_param_group,
           {"params": params0(shapes=[(3, 4), (5,)])})
    raises(ValueError, ["ns_steps", "100"], Z, params0(shapes=MUON_SHAPES), fo.Muon,
           ns_steps=100)
    raises(TypeError, ["optimizer_class", "fo.AdamW"], Z, params0(), dict)
    raises(TypeError, ["optimizer_class=Adafactor", "cannot be sharded", "whole matrix"], Z,
           params0(), fo.Adafactor)
    raises(TypeError, ["optimizer_class=LBFGS", "cannot be sharded", "closure"], Z, params0(),
           fo.LBFGS)
    raises(TypeError, ["optimizer_class=SparseAdam", "cannot be sharded", "SparseGrad"], Z,
           params0(), fo.SparseAdam)
    raises(TypeError, ["optimizer_class=MuonWithAuxAdam", "cannot be sharded", "fo.Muon"],
           Z, params0(), fo.MuonWithAuxAdam)
    raises(ValueError, ["stage", "got 3"], Z, params0(), fo.AdamW, stage=3)
    raises(ValueError, ["reduce_scatter", "'tree'"], Z, params0(), fo.AdamW,
           reduce_scatter="tree")
    raises(ValueError, ["int4", "rank1_normalization=False"], Z, params0(), fo.AdamW,
           state_dtype="int4")
    raises(ValueError, ["int8", "LAMB", "min_quantized_size=4096", "from 1 to 30000"], Z,
           params0(), fo.LAMB, state_dtype="int8")
    raises(TypeError, ["state_dtype"], Z, params0(), fo.Prodigy, state_dtype="int8")
    raises(ValueError, ["lr"], Z, params0(), fo.AdamW, lr=-1.0)
    raises(TypeError, ["comm"], Z, params0(), fo.AdamW, comm="world")
    ps = params0()
    zero = Z(ps, fo.Adam, stage=1, lr=1e-3)
    zero.step(grads_of(rank, 0))
    before = [p.copy() for p in ps]
    state = {i: {k: (x.copy() if isinstance(x, np.ndarray) else x) for k, x in st.items()}
             for i, st in zero.state.items()}
    g = grads_of(rank, 1)
    raises(ValueError, ["expected 5 grads", "got 4"], zero.step, g[:4])
    raises(ValueError, ["grads[2]", "(70, 130)"], zero.step, g[:2] + [g[2].T] + g[3:])
    raises(TypeError, ["grads[1]", "list"], zero.step, [g[0], list(g[1])] + g[2:])
    raises(TypeError, ["grads[0]", "float16"], zero.step,
           [g[0].astype(np.float16)] + g[1:])
    ro = [x.copy() for x in g]
    ro[3].flags.writeable = False
    raises(ValueError, ["grads[3]", "read-only"], zero.step, ro)
    raises(ValueError, ["max_grad_norm", "-1"], zero.step, g, max_grad_norm=-1.0)
    raises(ValueError, ["grad_scale"], zero.step, g, grad_scale=0.0)
    raises(ValueError, ["to must be a rank", "7"], zero.consolidate_state_dict, to=7)
    raises(RuntimeError, ["consolidate_state_dict"], zero.state_dict)
    bad_sd = {"state": {}, "param_groups": [{"params": [0, 1], "lr": 1.0}]}
    raises(ValueError, ["param_groups[0]['params']"], zero.load_state_dict, bad_sd)
    raises(TypeError, ["sharded_state_dict"], zero.load_sharded_state_dict, [{"x": 1}])
    part = zero.sharded_state_dict()
    if size > 1:
        raises(ValueError, ["all", "ranks"], zero.load_sharded_state_dict, [part])
    raises(ValueError, ["op", "'max'"], allreduce_, g, op="max")
    raises(ValueError, ["bucket_bytes", "0"], allreduce_, g, bucket_bytes=0)
    raises(ValueError, ["algorithm", "'tree'"], allreduce_, g, algorithm="tree")
    raises(TypeError, ["float16"], allreduce_, [g[0].astype(np.float16)])
    raises(ValueError, ["max_norm"], clip_grad_norm_, g, -1.0)
    # A rank owning no element (one small param: one work unit) raises with the others.
    small = [np.ones(10, dtype=np.float32)]
    zs = Z(small, fo.Adam, lr=1e-3)
    assert sum(len(zs._groups[0].shards.pieces[r]) == 0 for r in range(size)) == size - 1
    zs.param_groups[0]["lr"] = -1.0
    raises(ValueError, ["lr"], zs.step, [np.ones(10, dtype=np.float32)])
    zs.param_groups[0]["lr"] = 1e-3
    raises(ValueError, ["grad_scale", "out of range"], zs.step,
           [np.ones(10, dtype=np.float32)], grad_scale=1e-45)
    assert_equal(ps, before, "params after rejected calls")
    for i, st in zero.state.items():
        for k, x in st.items():
            assert np.array_equal(x, state[i][k]), (i, k)
    assert np.array_equal(g[0], grads_of(rank, 1)[0])
    say("ok bad input: every argument, nothing changed")


def check_shards_follow_units():
    """The claim everything rests on, for random layouts and 1-5 simulated ranks: a plan over
    one rank's slices holds exactly its run of the whole plan's segments, and folding every
    rank's per-segment partials (Plan.partials) gives the whole plan's per-tensor sums and
    total bitwise. No communication: each rank checks its own layouts."""
    from fusedoptim import _kernels
    from fusedoptim.distributed._collectives import fold, shard_units, slices
    sumsq = _kernels.REDUCE_IDS["sumsq"]
    rng = np.random.default_rng(100 + rank)
    for trial in range(12):
        sizes = rng.choice([0, 1, 7, 255, 256, 300, 4096, 16384, 20000, 50000],
                           size=rng.integers(1, 8))
        arrays = [rng.standard_normal(int(n)).astype(np.float32) for n in sizes]
        whole = _kernels.Plan(arrays, [None] * len(arrays), 0, 1, None)
        whole.active_array[...] = 1
        per_tensor, totals = whole.reduce(sumsq)
        seg_len = whole.segments()[2]
        for nranks in range(1, 6):
            sh = shard_units(arrays, nranks)
            parts = []
            for r in range(nranks):
                mine = slices(arrays, sh.pieces[r])
                if not mine:
                    assert sh.seg[r] == sh.seg[r + 1]
                    continue
                sub = _kernels.Plan(mine, [None] * len(mine), 0, 1, None)
                sub.active_array[...] = 1
                sub.reduce(sumsq)
                assert np.array_equal(sub.segments()[2], seg_len[sh.seg[r]:sh.seg[r + 1]])
                parts.append(sub.partials())
            got_t, got = fold(np.concatenate(parts), sh.seg_t, len(arrays))
            assert np.array_equal(got_t, per_tensor), (sizes, nranks)
            assert got[0] == totals[0], (sizes, nranks)
    say("ok shards follow the driver's work units: partials fold to the whole plan's sums")


def check_mismatch_raises():
    shapes = list(SHAPES)
    if rank == size - 1:
        shapes[1] = (5001,)
    try:
        ZeroRedundancyOptimizer(params0(shapes=shapes), fo.AdamW, lr=1e-3)
    except ValueError as e:
        assert "disagree" in str(e), e
    else:
        raise AssertionError(f"rank {rank}: a mismatched layout did not raise")
    say("ok mismatched layout raises on every rank")


def check_collectives():
    """allreduce_ (in-place runs, packed buckets, async) and clip_grad_norm_."""
    big = grads_of(rank, 0, shapes=[(300_000,)])
    small = grads_of(rank, 1, shapes=[(5,), (700,), (3, 3)], dtype=np.float64)
    arena = fo.FlatParams({"a": (1000,), "b": (20, 30)})
    for gk, v in zip(arena.grads.values(), grads_of(rank, 2, shapes=[(1000,), (20, 30)])):
        gk[...] = v
    work = allreduce_(big + small + list(arena.grads.values()), async_op=True,
                      bucket_bytes=4096)
    work.wait()
    assert work.is_completed()
    expect = (mean_grads(0, shapes=[(300_000,)]) + mean_grads(1, shapes=[(5,), (700,), (3, 3)],
                                                              dtype=np.float64)
              + mean_grads(2, shapes=[(1000,), (20, 30)]))
    assert_equal(big + small + list(arena.grads.values()), expect, "allreduce_ mean")
    # the ring: in-place runs (one large array, the arena) and packed buckets, blocking
    big = grads_of(rank, 0, shapes=[(300_000,)])
    small = grads_of(rank, 1, shapes=[(5,), (700,), (3, 3)], dtype=np.float64)
    for gk, v in zip(arena.grads.values(), grads_of(rank, 2, shapes=[(1000,), (20, 30)])):
        gk[...] = v
    work = allreduce_(big + small + list(arena.grads.values()), async_op=True,
                      bucket_bytes=4096, algorithm="ring")
    assert work.is_completed()
    assert_equal(big + small + list(arena.grads.values()), expect, "ring allreduce_ mean")
    # a zero-size grad between two that do not tile (it tiles with either one)
    for how in ("mpi", "ring"):
        z = grads_of(rank, 5, shapes=[(40, 30), (0, 8), (30, 8)])
        allreduce_(z, algorithm=how)
        assert_equal(z, mean_grads(5, shapes=[(40, 30), (0, 8), (30, 8)]), f"zero-size, {how}")
    s = grads_of(rank, 3, shapes=[(50,)])
    allreduce_(s, op="sum")
    total = sum(grads_of(r, 3, shapes=[(50,)])[0].astype(np.float64) for r in range(size))
    np.testing.assert_allclose(s[0], total, rtol=1e-6)
    g = mean_grads(4)       # the same on every rank, as after allreduce_
    ref = [x.copy() for x in g]
    norm = clip_grad_norm_(g, 1.0)
    ref_norm = fo.clip_grad_norm_(ref, 1.0)
    assert norm == ref_norm, (norm, ref_norm)
    assert_equal(g, ref, "clip_grad_norm_")
    say("ok allreduce_ (bucketed, in place, async; Iallreduce and ring) and clip_grad_norm_")


#: the optimizers the checkpoint runs save and reshard: (class, hyperparameters, shapes,
#: file name prefix)
CHECKPOINTED = [(fo.AdamW, dict(lr=1e-3, amsgrad=True), SHAPES, ""),
                (fo.Muon, MUON_KW, MUON_SHAPES, "muon_")]


def run_checkpoint(cls, kw, shapes, tag, stage=2):
    """Consolidated round trip, and a plain state_dict loaded into ZeRO; then (save mode)
    a sharded checkpoint for the 3 -> 2 resharding run."""
    ps = params0(shapes=shapes)
    ref_ps = [p.copy() for p in ps]
    zero = ZeroRedundancyOptimizer(ps, cls, stage=stage, **kw)
    ref = cls(ref_ps, **kw)
    for step in range(5):
        zero.step(grads_of(rank, step, shapes=shapes))
        ref.step(mean_grads(step, shapes=shapes))
    zero.consolidate_state_dict(to=0)
    if rank == 0:
        sd = zero.state_dict()
        want = ref.state_dict()
        assert sd["param_groups"] == want["param_groups"], (sd["param_groups"],
                                                            want["param_groups"])
        assert sd["state"].keys() == want["state"].keys()
        for i in want["state"]:
            for k, x in want["state"][i].items():
                assert np.array_equal(sd["state"][i][k], x), (i, k)
        plain = cls([p.copy() for p in ps], **kw)
        plain.load_state_dict(sd)
    else:
        try:
            zero.state_dict()
        except RuntimeError:
            pass
        else:
            raise AssertionError("state_dict() on a rank without consolidated state")
    # A plain optimizer's state_dict into a fresh ZeRO: both go on identically.
    ps2 = [p.copy() for p in ref_ps]
    zero2 = ZeroRedundancyOptimizer(ps2, cls, stage=stage, **kw)
    zero2.load_state_dict(ref.state_dict())
    if MODE == "save":
        with open(os.path.join(DIR, f"{tag}shard{rank}.pkl"), "wb") as f:
            pickle.dump(zero.sharded_state_dict(), f)
        if rank == 0:
            with open(os.path.join(DIR, f"{tag}ref.pkl"), "wb") as f:
                pickle.dump((ref.state_dict(), ref_ps), f)
    for step in range(5, 10):
        zero2.step(grads_of(rank, step, shapes=shapes))
        zero.step(grads_of(rank, step, shapes=shapes))
        ref.step(mean_grads(step, shapes=shapes))
        assert_equal(ps2, ref_ps, f"{cls.__name__}: plain state_dict into ZeRO, step {step}")
        assert_equal(ps, ref_ps, f"{cls.__name__}: after consolidating, step {step}")
    say(f"ok consolidate_state_dict/state_dict round trip, plain state_dict into ZeRO "
        f"({cls.__name__})")


def run_reshard(cls, kw, shapes, tag):
    """Resume from the sharded checkpoint of a run at another world size."""
    files = sorted(f for f in os.listdir(DIR) if f.startswith(f"{tag}shard"))
    shards = []
    for f in files:
        with open(os.path.join(DIR, f), "rb") as fh:
            shards.append(pickle.load(fh))
    with open(os.path.join(DIR, f"{tag}ref.pkl"), "rb") as fh:
        ref_sd, ref_ps = pickle.load(fh)
    ps = [p.copy() for p in ref_ps]
    zero = ZeroRedundancyOptimizer(ps, cls, stage=2, **kw)
    zero.load_sharded_state_dict(shards)
    ref = cls(ref_ps, **kw)
    ref.load_state_dict(ref_sd)
    for step in range(5, 10):
        zero.step(grads_of(rank, step, shapes=shapes))
        ref.step(mean_grads(step, shapes=shapes))
        assert_equal(ps, ref_ps, f"{cls.__name__} resharded {len(files)} -> {size}, "
                                 f"step {step}")
    zero.consolidate_state_dict(to=0)
    if rank == 0:
        sd = zero.state_dict()
        for i, st in ref.state_dict()["state"].items():
            for k, x in st.items():
                assert np.array_equal(sd["state"][i][k], x), (i, k)
    say(f"ok sharded checkpoint resharded {len(files)} -> {size} ranks ({cls.__name__})")


def run_die():
    """The last rank dies mid-training; the others are in a collective. Open MPI's launcher
    sees the exit and ends the job, so the test sees a failure, not a hang."""
    ps = params0()
    zero = ZeroRedundancyOptimizer(ps, fo.AdamW, stage=2, lr=1e-3)
    zero.step(grads_of(rank, 0))
    if rank == size - 1:
        os._exit(3)
    for step in range(1, 1000):
        zero.step(grads_of(rank, step))
    say("survived")


if MODE == "die":
    run_die()
elif MODE == "load":
    for checkpointed in CHECKPOINTED:
        run_reshard(*checkpointed)
elif MODE == "only":        # development: the checks named in argv[3:]
    for name in sys.argv[3:]:
        globals()[name]()
else:
    check_shards_follow_units()
    check_mismatch_raises()
    check_bad_input()
    check_collectives()
    check_lamb_spans_shards()
    check_skip_nonfinite()
    check_flat_groups_scheduler_scale()
    check_clip()
    check_add_param_group()
    check_int8()
    check_none_grads()
    check_prodigy()
    check_bfloat16_params()
    for checkpointed in CHECKPOINTED:
        run_checkpoint(*checkpointed)
    if size > 2:
        check_normal_grads_tolerance()
    check_equivalence()
    check_muon()
say("done")
