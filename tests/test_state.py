"""Optimizer state plumbing in the base class: lazily created buffers, checkpoints that lack
a buffer, per-tensor scalar state and non-zero initial values."""

import numpy as np

import fusedoptim as fo


def _ones(n=3):
    return np.ones(n, np.float32)


def test_checkpoint_missing_a_buffer_recreates_it_instead_of_crashing():
    """A loaded state entry without one of the kernel's buffers used to reach the kernel as
    a null pointer (segfault). It is now created, as on a first step."""
    opt = fo.Adam([_ones()])
    opt.step([_ones()])
    sd = opt.state_dict()
    del sd["state"][0]["exp_avg"]
    p = _ones()
    fresh = fo.Adam([p])
    fresh.load_state_dict(sd)
    fresh.step([_ones()])
    assert sorted(fresh.state[0]) == ["exp_avg", "exp_avg_sq", "step"]
    assert fresh.state[0]["step"] == 2 and np.all(np.isfinite(p))


def test_slot_enabled_while_a_param_skips_is_created_when_it_steps():
    """amsgrad switched on while param 1 has no grad: its max_exp_avg_sq must be created at
    its next step (it used to be read through a null pointer)."""
    params = [_ones(), _ones()]
    opt = fo.Adam(params)
    opt.step([_ones(), _ones()])
    opt.param_groups[0]["amsgrad"] = True
    opt.step([_ones(), None])
    assert "max_exp_avg_sq" not in opt.state[1]
    opt.step([_ones(), _ones()])
    assert "max_exp_avg_sq" in opt.state[1]
    assert all(np.all(np.isfinite(p)) for p in params)
