"""Rprop specifics: step sizes start at lr, grow, shrink, clamp, and forget on sign change."""

import numpy as np
import pytest

import fusedoptim as fo


def test_step_size_starts_at_lr_of_its_group():
    a, b = np.zeros(3), np.zeros(3)
    opt = fo.Rprop([{"params": [a]}, {"params": [b], "lr": 0.05}], lr=0.01)
    g = np.array([1.0, -2.0, 0.0])
    opt.step([g, g])
    # First step: no previous grad, factor 1: each element moves by lr against its sign.
    np.testing.assert_array_equal(opt.state[0]["step_size"], np.full(3, 0.01))
    np.testing.assert_array_equal(opt.state[1]["step_size"], np.full(3, 0.05))
    np.testing.assert_array_equal(a, [-0.01, 0.01, 0.0])
    np.testing.assert_array_equal(b, [-0.05, 0.05, 0.0])
    # lr only initialises the step sizes (as in torch): changing it later changes nothing.
    opt.param_groups[0]["lr"] = 123.0
    opt.step([g, None])
    np.testing.assert_array_equal(opt.state[0]["step_size"], [0.012, 0.012, 0.01])


def test_grow_shrink_clamp_and_forget(rng):
    """Hand-worked sequence on four elements, float64."""
    p = np.zeros(4)
    opt = fo.Rprop([p], lr=1.0, etas=(0.5, 2.0), step_sizes=(0.3, 3.0))
    opt.step([np.array([1.0, 1.0, 1.0, 0.0])])
    opt.step([np.array([1.0, -1.0, 1.0, 1.0])])   # agree, flip, agree, was zero
    st = opt.state[0]
    np.testing.assert_array_equal(st["step_size"], [2.0, 0.5, 2.0, 1.0])
    np.testing.assert_array_equal(st["prev"], [1.0, 0.0, 1.0, 1.0])  # flip forgets
    np.testing.assert_array_equal(p, [-3.0, -1.0, -3.0, -1.0])       # flip does not move
    opt.step([np.array([1.0, -1.0, -1.0, 1.0])])
    # 2*2=4 -> clamped to 3; after a flip prev=0, factor 1; 2*0.5=1, flip; 1*2=2.
    np.testing.assert_array_equal(st["step_size"], [3.0, 0.5, 1.0, 2.0])
    np.testing.assert_array_equal(p, [-6.0, -0.5, -3.0, -3.0])
    for _ in range(3):
        opt.step([np.array([1.0, 1.0, -1.0, 1.0]) * (-1) ** _])
    assert st["step_size"].min() >= 0.3 and st["step_size"].max() <= 3.0


def test_step_sizes_match_torch(rng):
    torch = pytest.importorskip("torch")
    p = rng.standard_normal(1000).astype(np.float32)
    t = torch.tensor(p.copy())
    kw = dict(lr=0.02, etas=(0.4, 1.3), step_sizes=(1e-3, 0.5))
    opt, topt = fo.Rprop([p], **kw), torch.optim.Rprop([t], foreach=False, **kw)
    for k in range(40):
        g = rng.standard_normal(1000).astype(np.float32)
        g[: 10 * (k % 3)] = 0.0     # zero grads: factor 1 and no move
        opt.step([g])
        t.grad = torch.tensor(g)
        topt.step()
    for ours, theirs in [(opt.state[0]["step_size"], topt.state[t]["step_size"]),
                         (opt.state[0]["prev"], topt.state[t]["prev"]), (p, t)]:
        np.testing.assert_array_equal(ours, theirs.numpy())


def test_functional_needs_initialised_step_sizes(rng):
    kw = dict(step_size_min=1e-6, step_size_max=50.0, etaminus=0.5, etaplus=1.2)
    p = [rng.standard_normal(5)]
    with pytest.raises(ValueError, match=r"step_sizes\[0\] is None.*np\.full_like\(param, lr\)"):
        fo.functional.rprop(p, [np.ones(5)], [np.zeros(5)], [None], [0], **kw)
    p_cls = [x.copy() for x in p]
    prevs, sizes, steps = [np.zeros(5)], [np.full(5, 0.01)], [0]
    opt = fo.Rprop(p_cls, lr=0.01)
    ref = [x.copy() for x in p]
    ref_state = ([np.zeros(5)], [np.full(5, 0.01)], [0])
    for _ in range(10):
        g = [rng.standard_normal(5)]
        fo.functional.rprop(p, g, prevs, sizes, steps, **kw)
        fo.reference.rprop(ref, g, *ref_state, **kw)
        opt.step(g)
    assert p[0].tobytes() == p_cls[0].tobytes() == ref[0].tobytes()
    assert sizes[0].tobytes() == opt.state[0]["step_size"].tobytes()
