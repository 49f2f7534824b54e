"""The flat parameter arena (fo.FlatParams), and param groups whose arrays tile one buffer.

The arena path must be invisible in the results: every test compares it bitwise with the
same optimizer over separate arrays (the chunk kernels are elementwise, so how the elements
are grouped into tensors cannot change a bit).
"""

import numpy as np
import pytest

import fusedoptim as fo
from cases import CASES
from test_optimizers import _assert_same_state

# 0-d, empty, odd sizes (views start off the 64-byte grid) and several work units in one.
SHAPES = {"W1": (7, 5), "b1": (5,), "s": (), "e": (0,), "W2": (40_000,), "b2": (3,)}
NAMES = list(SHAPES)
case_ids = [c.name for c in CASES]


def _random_arrays(rng, dtype=np.float32):
    return {k: np.asarray(rng.standard_normal(s), dtype=dtype) for k, s in SHAPES.items()}


def _grad_seq(rng, steps, dtype=np.float32, none_at=()):
    """`steps` dicts of grads; at step i, the names in none_at[i] (a dict) get None."""
    none_at = dict(none_at)
    return [{k: (None if k in none_at.get(i, ()) else
                 np.asarray(rng.standard_normal(s), dtype=dtype)) for k, s in SHAPES.items()}
            for i in range(steps)]


def _arena_step(opt, arena, grads, i):
    """Step through the arena: write the grads into its buffer, then alternate step() and
    step(arena.grads); a step with a None grad passes a dict of the arena's views."""
    for k, g in grads.items():
        if g is not None:
            arena.grads[k][...] = g
    if any(g is None for g in grads.values()):
        opt.step({k: (None if g is None else arena.grads[k]) for k, g in grads.items()})
    elif i % 2:
        opt.step(arena.grads)
    else:
        opt.step()


def _ntensors(opt, gi=0):
    return opt._caches[gi].plan.ntensors


def _one(case):
    """The plan's tensor count when an arena group steps together: 1, or one per param for
    optimizers with per-tensor norms (Case.flat_steps False), on the same flat buffers."""
    return 1 if case.flat_steps else len(NAMES)


# -- the arena itself ---------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_arena_layout(dtype):
    arena = fo.FlatParams(SHAPES, dtype=dtype)
    item = np.dtype(dtype).itemsize
    assert arena.dtype == dtype and arena.names == tuple(NAMES) and len(arena) == len(NAMES)
    assert arena.size == sum(int(np.prod(s)) for s in SHAPES.values()) == arena.flat.size
    assert arena.flat.ctypes.data % 64 == 0 and arena.flat_grad.ctypes.data % 64 == 0
    assert not arena.flat.any() and not arena.flat_grad.any()
    for (name, shape), offset in zip(SHAPES.items(), arena.offsets):
        for view, buf in ((arena.params[name], arena.flat),
                          (arena.grads[name], arena.flat_grad)):
            assert view.shape == shape and view.dtype == dtype and view.flags.writeable
            if view.size:           # an empty view has no memory to place
                assert view.ctypes.data == buf.ctypes.data + offset * item
    arena.params["W1"][...] = 2.0
    assert arena.flat[:35].sum() == 70.0         # the views write the buffer
    with pytest.raises(TypeError):
        arena.params["W1"] = np.zeros((7, 5))    # fixed views: write into them instead
    arena.flat_grad[:] = 1.0
    arena.zero_grad()
    assert not arena.flat_grad.any()
    assert "W1': (7, 5)" in repr(arena)


def test_from_arrays_copies_dicts_and_lists(rng):
    src = _random_arrays(rng, np.float64)
    arena = fo.FlatParams.from_arrays(src)
    assert arena.dtype == np.float64 and arena.names == tuple(NAMES)
    for k in NAMES:
        assert arena.params[k].tobytes() == src[k].tobytes()
        assert not np.shares_memory(arena.params[k], src[k])
    as_list = fo.FlatParams.from_arrays(list(src.values()), dtype=np.float32)
    assert as_list.names is None and isinstance(as_list.params, tuple)
    for a, b in zip(as_list.params, src.values()):
        assert a.dtype == np.float32 and a.tobytes() == b.astype(np.float32).tobytes()


@pytest.mark.parametrize("call, exc, words", [
    (lambda: fo.FlatParams([(3,)]), TypeError, "shapes must be a dict"),
    (lambda: fo.FlatParams({}), ValueError, "shapes is empty"),
    (lambda: fo.FlatParams({"W": (2, -1)}), ValueError, "shapes['W'] must be a shape"),
    (lambda: fo.FlatParams({"W": "3"}), ValueError, "got '3'"),
    (lambda: fo.FlatParams({"W": 3}, dtype=np.int32), TypeError, "dtype must be np.float32"),
    (lambda: fo.FlatParams.from_arrays(3), TypeError, "got int"),
    (lambda: fo.FlatParams.from_arrays([]), ValueError, "arrays is empty"),
    (lambda: fo.FlatParams.from_arrays([np.zeros(2, np.float32), np.zeros(2)]), TypeError,
     "mixed dtypes"),
    (lambda: fo.FlatParams.from_arrays({"n": np.arange(3)}), TypeError, "dtype=np.float32"),
    (lambda: fo.FlatParams.from_arrays({"c": np.zeros(2, complex)}, dtype=np.float32),
     TypeError, "arrays['c'] has dtype complex128"),
])
def test_arena_rejects_bad_input_and_says_what_to_do(call, exc, words):
    with pytest.raises(exc) as err:
        call()
    assert words in str(err.value)


# -- an optimizer on the arena ------------------------------------------------------------

def _pair(case, kw, rng, dtype=np.float32):
    """(arena optimizer, arena, per-param optimizer, its params dict), same start values."""
    start = _random_arrays(rng, dtype)
    arena = fo.FlatParams.from_arrays(start)
    separate = {k: v.copy() for k, v in start.items()}
    return case.fused(arena, **kw), arena, case.fused(separate, **kw), separate


def _assert_same(arena, separate, opt_a, opt_b):
    for k in NAMES:
        assert arena.params[k].tobytes() == separate[k].tobytes(), k
    _assert_same_state(opt_a.state_dict(), opt_b.state_dict())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=case_ids)
def test_arena_steps_as_one_tensor_with_the_same_bits(case, dtype, rng):
    kw = case.sample(rng)
    opt, arena, ref, separate = _pair(case, kw, rng, dtype)
    for i, grads in enumerate(_grad_seq(rng, 24, dtype)):
        _arena_step(opt, arena, grads, i)
        ref.step(grads)
        if i == 12:
            for o in (opt, ref):
                o.param_groups[0]["lr"] *= 0.5
    assert _ntensors(opt) == _one(case) and opt._layouts[0].use_flat == case.flat_steps
    _assert_same(arena, separate, opt, ref)
    # The state lives in flat buffers; each param's entry is its view.
    layout = opt._layouts[0]
    for slot, buf in layout.buffers.items():
        assert opt.state[0][slot].base is buf.base and buf.ctypes.data % 64 == 0


@pytest.mark.parametrize("case", CASES, ids=case_ids)
def test_none_grads_fall_back_per_param_and_come_back(case, rng):
    """A step where some params have no grad runs per param (on views of the same flat
    buffers); their step counts part, as in torch. Once the counts meet again, the group
    steps as one tensor again. Bitwise equal to separate arrays throughout."""
    kw = case.sample(rng)
    opt, arena, ref, separate = _pair(case, kw, rng)
    # W1 skips steps 3 and 4; every other param skips 6 and 7, so they meet again at 8.
    rest = [k for k in NAMES if k != "W1"]
    seq = _grad_seq(rng, 12, none_at={3: ["W1"], 4: ["W1"], 6: rest, 7: rest})
    modes = []
    for i, grads in enumerate(seq):
        _arena_step(opt, arena, grads, i)
        ref.step(grads)
        modes.append(_ntensors(opt))
    n = len(NAMES)
    one = _one(case)
    assert modes == [one, one, one, n, n, n, n, n, one, one, one, one], modes
    assert {i: st["step"] for i, st in opt.state.items()} == {i: 10 for i in range(n)}
    _assert_same(arena, separate, opt, ref)


def test_step_counts_part_while_some_params_skip(rng):
    opt, arena, ref, separate = _pair(CASES[0], dict(lr=1e-2), rng)
    seq = _grad_seq(rng, 5, none_at={0: ["b2"], 1: ["b1", "s"], 3: ["b1"]})
    for i, grads in enumerate(seq):
        _arena_step(opt, arena, grads, i)
        ref.step(grads)
        if i == 0:
            assert 5 not in opt.state      # no state before a param's first grad, as torch
    steps = {NAMES[i]: st["step"] for i, st in opt.state.items()}
    assert steps == {"W1": 5, "b1": 3, "s": 4, "e": 5, "W2": 5, "b2": 4}
    _assert_same(arena, separate, opt, ref)


@pytest.mark.parametrize("case", CASES, ids=case_ids)
def test_checkpoints_move_between_arena_and_separate_arrays_bitwise(case, rng):
    kw = case.sample(rng)
    start = _random_arrays(rng)
    # b2 skips step 5 and the others step 7: in lockstep again by the save at step 12.
    seq = _grad_seq(rng, 20, none_at={5: ["b2"], 7: [k for k in NAMES if k != "b2"]})
    straight = {k: v.copy() for k, v in start.items()}
    opt = case.fused(straight, **kw)
    for g in seq:
        opt.step(g)
    for saver_arena in (True, False):
        # 12 steps on one layout, save, load into the other layout, 8 more steps.
        layouts = []
        for use_arena in (saver_arena, not saver_arena):
            arena = fo.FlatParams.from_arrays(start)
            params = arena if use_arena else {k: v.copy() for k, v in start.items()}
            layouts.append((arena if use_arena else None, params, case.fused(params, **kw)))
        (arena_a, params_a, first), (arena_b, params_b, second) = layouts
        for i, g in enumerate(seq[:12]):
            _arena_step(first, arena_a, g, i) if arena_a else first.step(g)
        saved = first.state_dict()
        values = arena_a.params if arena_a else params_a
        target = arena_b.params if arena_b else params_b
        for k in NAMES:
            target[k][...] = values[k]
        second.load_state_dict(saved)
        for i, g in enumerate(seq[12:]):
            _arena_step(second, arena_b, g, i) if arena_b else second.step(g)
        for k in NAMES:
            assert target[k].tobytes() == straight[k].tobytes(), (saver_arena, k)
        _assert_same_state(second.state_dict(), opt.state_dict())
        if arena_b is not None:      # the loaded copies were moved into the flat buffers
            assert _ntensors(second) == _one(case)
            assert all(second.state[0][s].base is b.base
                       for s, b in second._layouts[0].buffers.items())


def test_grads_that_do_not_tile_are_bound_per_param(rng):
    """Separate grad arrays, a dict of the arena's views, another arena's grads: all valid,
    all the same bits; only a tiling in the same layout binds as one flat grad."""
    opt, arena, ref, separate = _pair(CASES[1], dict(lr=1e-2), rng)
    other = fo.FlatParams(SHAPES)
    for i, grads in enumerate(_grad_seq(rng, 8)):
        kind = i % 4
        if kind == 0:
            opt.step(grads)                                    # separate arrays
        elif kind == 1:
            for k, g in grads.items():
                other.grads[k][...] = g
            opt.step(other.grads)                              # another buffer, same layout
        elif kind == 2:
            for k, g in grads.items():
                arena.grads[k][...] = g
            opt.step(dict(arena.grads))                        # the views, not the mapping
        else:
            opt.step([grads[k].copy() for k in NAMES])         # a list in param order
        ref.step(grads)
        assert _ntensors(opt) == (len(NAMES) if kind in (0, 3) else 1), i
    _assert_same(arena, separate, opt, ref)


def test_bad_grads_on_an_arena_are_rejected_and_change_nothing(rng):
    opt, arena, _, _ = _pair(CASES[0], dict(lr=1e-2), rng)
    arena.flat_grad[:] = 1.0
    opt.step()
    snapshot = arena.flat.copy(), opt.state_dict()
    bad_shape = dict(arena.grads, b1=np.ones(4, np.float32))
    with pytest.raises(ValueError, match=r"grads\['b1'\] has shape \(4,\).*shape \(5,\)"):
        opt.step(bad_shape)
    with pytest.raises(ValueError, match="shares memory with its param"):
        opt.step(arena.params)
    with pytest.raises(TypeError, match=r"grads\['W1'\] has dtype float64"):
        opt.step(dict(arena.grads, W1=np.ones((7, 5))))
    assert arena.flat.tobytes() == snapshot[0].tobytes()
    _assert_same_state(opt.state_dict(), snapshot[1])


def test_step_without_grads_needs_an_arena():
    opt = fo.Adam([np.zeros(3, np.float32)])
    with pytest.raises(TypeError, match=r"step\(\) without grads reads them from the "
                                        r"FlatParams.*param group 0.*pass grads"):
        opt.step()


def test_views_that_tile_one_buffer_step_as_one_tensor(rng):
    buf, gbuf = rng.standard_normal(30).astype(np.float32), np.ones(30, np.float32)
    params = [buf[:10].reshape(2, 5), buf[10:]]
    opt = fo.AdamW(params)
    opt.step([gbuf[:10].reshape(2, 5), gbuf[10:]])
    assert _ntensors(opt) == 1
    # Out of order, or with a gap: not one run of memory, so per param.
    assert fo.AdamW([buf[10:], buf[:10]])._layouts[0].flat_param is None
    assert fo.AdamW([buf[:10], buf[11:20]])._layouts[0].flat_param is None
    # Separate allocations that happen to be adjacent are not "one buffer".
    a = np.zeros(4, np.float32)
    assert fo.AdamW([a, np.zeros(4, np.float32)])._layouts[0].flat_param is None


def test_zero_grad_zeroes_the_arena_grads_only():
    arena = fo.FlatParams({"w": (4,)})
    arena.flat_grad[:] = 3.0
    fo.SGD(arena).zero_grad()
    assert not arena.flat_grad.any()
    g = np.ones(4, np.float32)
    fo.SGD([np.zeros(4, np.float32)]).zero_grad()
    assert (g == 1).all()


def test_amsgrad_switched_on_gets_a_flat_buffer(rng):
    opt, arena, ref, separate = _pair(CASES[0], dict(lr=1e-2), rng)
    for i, grads in enumerate(_grad_seq(rng, 6)):
        if i == 3:
            for o in (opt, ref):
                o.param_groups[0]["amsgrad"] = True
        _arena_step(opt, arena, grads, i)
        ref.step(grads)
    assert _ntensors(opt) == 1 and "max_exp_avg_sq" in opt._layouts[0].buffers
    _assert_same(arena, separate, opt, ref)


def test_loading_a_checkpoint_does_not_write_into_old_state_views(rng):
    opt, arena, _, _ = _pair(CASES[0], dict(lr=1e-2), rng)
    arena.flat_grad[:] = 1.0
    opt.step()
    saved = opt.state_dict()
    old = opt.state[0]["exp_avg"]
    before = old.copy()
    opt.step()
    kept = old.copy()
    opt.load_state_dict(saved)
    opt.step()
    assert old.tobytes() == kept.tobytes() and not np.array_equal(before, kept)


def test_param_groups_of_several_arenas(rng):
    a, b = fo.FlatParams({"w": (5,), "v": (3,)}), fo.FlatParams({"u": (4,)}, np.float64)
    sep = [np.zeros(5, np.float32), np.zeros(3, np.float32), np.zeros(4)]
    opt = fo.Adam([{"params": a, "lr": 0.1}, {"params": b}])
    ref = fo.Adam([{"params": sep[:2], "lr": 0.1}, {"params": sep[2:]}])
    for _ in range(3):
        gs = [rng.standard_normal(x.shape).astype(x.dtype) for x in sep]
        a.grads["w"][...], a.grads["v"][...], b.grads["u"][...] = gs
        opt.step()
        ref.step(gs)
    assert _ntensors(opt, 0) == 1 and _ntensors(opt, 1) == 1
    got = [a.params["w"], a.params["v"], b.params["u"]]
    assert all(x.tobytes() == y.tobytes() for x, y in zip(got, sep))
