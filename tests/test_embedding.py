"""fusedoptim inside other frameworks: stepping a torch model's params in place, and sharing
the process's OpenMP runtime with threadpoolctl (and torch)."""

import os
import subprocess
import sys

import numpy as np
import pytest

import fusedoptim as fo
from fusedoptim import _kernels

# Stated tolerance for the torch comparison: both sides run float32 AdamW on the same grads
# but in a different operation order (torch lerps m and divides by sqrt of the bias
# correction; fusedoptim multiplies), a few ulp per step, which then feed back through the
# loss. At lr=1e-3 (the loss falls from 0.51 to 0.12 in 200 steps, far from the noisy
# regime near a minimum) the weights (|w| < 0.6) agree to 1.1e-6; 1e-5 absolute leaves 10x
# margin, while dropping the weight decay alone moves them by 3e-3.
TORCH_ATOL = 1e-5


def test_torch_mlp_trained_in_place_matches_torch_adamw():
    torch = pytest.importorskip("torch")

    def make_model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(),
                                   torch.nn.Linear(32, 16), torch.nn.Tanh(),
                                   torch.nn.Linear(16, 1))

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(128, 8, generator=gen)
    y = torch.sin(x.sum(dim=1, keepdim=True))
    loss_fn = torch.nn.MSELoss()
    kw = dict(lr=1e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=1e-2)

    ref_model, model = make_model(), make_model()
    ref_opt = torch.optim.AdamW(ref_model.parameters(), **kw)
    # Zero-copy views of the CPU params: fusedoptim updates the model's own memory.
    views = [p.detach().numpy() for p in model.parameters()]
    assert all(v.ctypes.data == p.data_ptr() for v, p in zip(views, model.parameters()))
    opt = fo.AdamW(views, **kw)

    first_loss = None
    for _ in range(200):
        ref_opt.zero_grad()
        loss_fn(ref_model(x), y).backward()
        ref_opt.step()

        model.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step([p.grad.numpy() for p in model.parameters()])
        first_loss = loss.item() if first_loss is None else first_loss

    assert loss.item() < 0.5 * first_loss          # it trained
    for p, q in zip(model.parameters(), ref_model.parameters()):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=0,
                                   atol=TORCH_ATOL)


# -- threads ------------------------------------------------------------------------------

def _threads_used():
    """Run the driver (the same Plan.run every optimizer step calls) with the diagnostic
    kernel that records which OpenMP thread ran each element; 8 work units, so that two
    threads both get work. Returns the set of thread numbers that ran."""
    p = np.full(8 * _kernels.CHUNK_ELEMENTS, -1.0, np.float32)
    plan = _kernels.Plan([p], [None], 0, 0, ["g"])
    plan.bind([np.zeros_like(p)])
    plan.run(_kernels.KERNEL_IDS["_thread_id"])
    return set(np.unique(p).astype(int).tolist())


def _check_threadpoolctl():
    """threadpool_limits(1) reaches the driver, fo.set_num_threads still works inside it,
    and leaving it restores the count. Returns the OpenMP runtimes threadpoolctl sees."""
    from threadpoolctl import threadpool_info, threadpool_limits
    fo.set_num_threads(2)
    assert fo.get_num_threads() == 2 and _threads_used() == {0, 1}
    runtimes = [d["filepath"] for d in threadpool_info() if d["user_api"] == "openmp"]
    assert runtimes, "threadpoolctl sees no OpenMP runtime"
    with threadpool_limits(limits=1, user_api="openmp"):
        assert fo.get_num_threads() == 1
        assert _threads_used() == {0}
        fo.set_num_threads(2)
        assert fo.get_num_threads() == 2 and _threads_used() == {0, 1}
        fo.set_num_threads(1)
    assert fo.get_num_threads() == 2 and _threads_used() == {0, 1}
    return runtimes


needs_openmp = pytest.mark.skipif(not _kernels.openmp_enabled(),
                                  reason="built without OpenMP: one thread, nothing to limit")


@needs_openmp
def test_threadpoolctl_limits_the_fused_pool():
    pytest.importorskip("threadpoolctl")
    before = fo.get_num_threads()
    try:
        _check_threadpoolctl()
    finally:
        fo.set_num_threads(before)


@needs_openmp
def test_threadpoolctl_limits_the_fused_pool_with_torch_loaded_first():
    """torch ships its own libgomp. Loaded first, it is the runtime fusedoptim binds to when
    the sonames match (one pool, which threadpoolctl sees); were a torch build to rename it,
    threadpoolctl would see two and limit both. Either way the limit must reach the driver."""
    pytest.importorskip("threadpoolctl")
    code = ("try:\n    import torch\nexcept ImportError:\n    pass\n"
            f"import sys\nsys.path.insert(0, {os.path.dirname(__file__)!r})\n"
            "from test_embedding import _check_threadpoolctl\n"
            "print(*_check_threadpoolctl())\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "gomp" in out.stdout or "omp" in out.stdout


def test_set_num_threads_reaches_the_driver():
    before = fo.get_num_threads()
    try:
        fo.set_num_threads(1)
        assert _threads_used() == {0}
        if _kernels.openmp_enabled():
            fo.set_num_threads(2)
            assert _threads_used() == {0, 1}
    finally:
        fo.set_num_threads(before)
