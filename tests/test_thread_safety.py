"""Thread safety (issue 16): different optimizers stepped at the same moment from several Python
threads equal stepping them one after the other, bitwise; one optimizer stepped from two
threads at once raises ConcurrentStepError (a RuntimeError) in the second caller and never
corrupts; every public entry that writes an optimizer's params or state is guarded; a grad
mutated by another thread during a step does not crash the process."""

import threading

import numpy as np
import pytest

import fusedoptim as fo
from fusedoptim._exclusive import ConcurrentStepError, held
from fusedoptim.swa_utils import AveragedParams

N = 200_000          # several work units: the steps run on OpenMP teams, GIL released
STEPS = 200


def _run_threads(fns):
    """Run each fn in its own thread, all started together; re-raise the first failure."""
    errors = []

    def wrap(fn):
        def run():
            try:
                fn()
            except BaseException as exc:       # pragma: no cover - reported below
                errors.append(exc)
        return run

    threads = [threading.Thread(target=wrap(fn)) for fn in fns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _workers(seed):
    """Four independent workloads, each a fresh set of arrays and a step function: an
    Optimizer (AdamW), a class with its own step (Adafactor), a functional entry with a grad
    utility (clip_grad_norm_ then fo.functional.lion), and AveragedParams."""
    rng = np.random.default_rng(seed)
    grads = [rng.standard_normal(N).astype(np.float32) for _ in range(3)]
    out = []

    p1 = [rng.standard_normal(N).astype(np.float32)]
    o1 = fo.AdamW(p1, lr=1e-2, weight_decay=0.1)
    out.append((p1, lambda k: o1.step([grads[k % 3]])))

    p2 = [rng.standard_normal((400, N // 400)).astype(np.float32)]
    o2 = fo.Adafactor(p2, lr=1e-2)
    g2 = [g.reshape(400, -1) for g in grads]
    out.append((p2, lambda k: o2.step([g2[k % 3]])))

    p3 = [rng.standard_normal(N).astype(np.float32)]
    m3 = [np.zeros(N, np.float32)]
    s3 = [0]
    g3 = [g.copy() for g in grads]

    def lion(k):
        g = g3[k % 3]
        g[...] = grads[k % 3]
        fo.clip_grad_norm_([g], 50.0)
        fo.functional.lion(p3, [g], m3, s3, lr=1e-3, beta1=0.9, beta2=0.99)
    out.append((p3 + m3, lion))

    p4 = rng.standard_normal(N).astype(np.float32)
    avg = AveragedParams([p4])

    def swa(k):
        p4[...] = grads[k % 3]
        avg.update_parameters([p4])
    out.append((avg.params, swa))
    return out


def test_different_optimizers_in_four_threads_equal_serial():
    together = _workers(7)
    serial = _workers(7)
    barrier = threading.Barrier(len(together))

    def worker(step):
        def run():
            for k in range(STEPS):
                barrier.wait()
                step(k)
        return run

    _run_threads([worker(step) for _, step in together])
    for k in range(STEPS):
        for _, step in serial:
            step(k)
    for (a, _), (b, _) in zip(together, serial):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x.view(np.uint32), y.view(np.uint32))


def _adamw(seed=3, n=400_000):
    rng = np.random.default_rng(seed)
    p = [rng.standard_normal(n).astype(np.float32)]
    return p, fo.AdamW(p, lr=1e-2)


def test_one_optimizer_from_two_threads_raises_or_is_whole():
    """Issue 16's bug: one AdamW (400K elements) stepped from two threads released together.
    Every trial ends as exactly one of the serial outcomes (A only or B only when one caller
    was refused; A then B or B then A when the calls did not overlap), never a mix."""
    rng = np.random.default_rng(0)
    ga, gb = (rng.standard_normal(400_000).astype(np.float32) for _ in range(2))
    p0, base = _adamw()
    base.step([rng.standard_normal(400_000).astype(np.float32)])
    start = (p0[0].copy(), base.state_dict())

    def outcome(order):
        p, opt = _adamw()
        p[0][...] = start[0]
        opt.load_state_dict(start[1])
        for g in order:
            opt.step([g])
        return p[0].view(np.uint32).copy()

    expected = {"A": outcome([ga]), "B": outcome([gb]), "AB": outcome([ga, gb]),
                "BA": outcome([gb, ga])}
    refused = 0
    for _ in range(12):
        p, opt = _adamw()
        p[0][...] = start[0]
        opt.load_state_dict(start[1])
        barrier = threading.Barrier(2)
        caught = []

        def call(g):
            def run():
                barrier.wait()
                try:
                    opt.step([g])
                except ConcurrentStepError as exc:
                    caught.append(str(exc))
            return run

        _run_threads([call(ga), call(gb)])
        assert len(caught) <= 1
        got = p[0].view(np.uint32)
        matches = [k for k, v in expected.items() if np.array_equal(got, v)]
        assert len(matches) == 1, (f"params match none of the serial outcomes: "
                                   f"{[int(np.sum(got != v)) for v in expected.values()]} "
                                   f"elements differ")
        if caught:
            refused += 1
            assert matches[0] in ("A", "B")
            assert "AdamW.step()" in caught[0] and "concurrently" in caught[0]
            assert int(opt.state[0]["step"]) == 2
        else:
            assert matches[0] in ("AB", "BA")
            assert int(opt.state[0]["step"]) == 3
    print(f"{refused} of 12 trials overlapped and were refused")


def _entries():
    """Every public entry that writes an optimizer's params or state: (label, object, call).
    Each call must be refused while another call on the object is running."""
    rng = np.random.default_rng(1)

    def arr(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    out = []
    p = [arr(8)]
    adam = fo.AdamW(p)
    adam.step([arr(8)])
    sd = adam.state_dict()
    out.append(("AdamW.step", adam, lambda: adam.step([arr(8)])))
    out.append(("AdamW.load_state_dict", adam, lambda: adam.load_state_dict(sd)))
    out.append(("AdamW.add_param_group", adam, lambda: adam.add_param_group(
        {"params": [arr(3)]})))
    arena = fo.FlatParams({"w": (4, 3), "b": (3,)})
    flat = fo.SGD(arena, lr=0.1, momentum=0.9)
    arena.flat_grad[...] = 1.0
    out.append(("SGD(FlatParams).step()", flat, lambda: flat.step()))
    twin = fo.reference.Adam([arr(5)])
    out.append(("reference.Adam.step", twin, lambda: twin.step([arr(5)])))
    af = fo.Adafactor([arr(4, 6)])
    out.append(("Adafactor.step", af, lambda: af.step([arr(4, 6)])))
    af_sd = af.state_dict()
    out.append(("Adafactor.load_state_dict", af, lambda: af.load_state_dict(af_sd)))
    sa = fo.SparseAdam([arr(6, 3)])
    out.append(("SparseAdam.step", sa, lambda: sa.step(
        [fo.SparseGrad(np.array([1, 4]), arr(2, 3))])))
    x = [arr(5).astype(np.float64)]
    lb = fo.LBFGS(x, max_iter=2)
    out.append(("LBFGS.step", lb, lambda: lb.step(lambda: (float(x[0] @ x[0]),
                                                             [2 * x[0]]))))
    mu = fo.Muon([arr(6, 4)])
    out.append(("Muon.step", mu, lambda: mu.step([arr(6, 4)])))
    mwa = fo.MuonWithAuxAdam([{"params": [arr(6, 4)], "use_muon": True},
                              {"params": [arr(4)], "use_muon": False}])
    out.append(("MuonWithAuxAdam.step", mwa, lambda: mwa.step([arr(6, 4), arr(4)])))
    sf = fo.ScheduleFreeAdamW([arr(5)])
    sf.step([arr(5)])
    out.append(("ScheduleFreeAdamW.eval", sf, lambda: (sf.eval(), sf.train())))
    la = fo.Lookahead(fo.SGD([arr(6)], lr=0.1), k=2)
    la.step([arr(6)])
    la_sd = la.state_dict()
    out.append(("Lookahead.step", la, lambda: la.step([arr(6)])))
    out.append(("Lookahead.sync", la, lambda: la.sync()))
    out.append(("Lookahead.load_state_dict", la, lambda: la.load_state_dict(la_sd)))
    ms = fo.MultiSteps(fo.AdamW([arr(6)]), every_k=2)
    ms.step([arr(6)])
    ms_sd = ms.state_dict()
    out.append(("MultiSteps.step", ms, lambda: ms.step([arr(6)])))
    out.append(("MultiSteps.load_state_dict", ms, lambda: ms.load_state_dict(ms_sd)))
    src = [arr(7)]
    avg = AveragedParams(src)
    out.append(("AveragedParams.update_parameters", avg,
                lambda: avg.update_parameters(src)))
    return out


def _snapshot(obj):
    if isinstance(obj, AveragedParams):
        return [a.copy() for a in obj.params], obj.n_averaged
    groups = obj.param_groups
    params = [p.copy() for g in groups for p in g["params"]]
    state = obj.state_dict()
    return params, state, len(groups)


def _equal(a, b):
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(
            a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(
            _equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)


@pytest.mark.parametrize("label", [e[0] for e in _entries()])
def test_every_entry_refuses_while_busy(label):
    """Another call on the object is running (it is marked busy, as by a step in another
    thread): the entry raises ConcurrentStepError naming the class and writes nothing; once
    the lock is free it works."""
    entry = {e[0]: e for e in _entries()}[label]
    _, obj, call = entry
    before = _snapshot(obj)
    with held(obj):
        with pytest.raises(RuntimeError, match=rf"{type(obj).__name__}\.\w+\(\) was called "
                                               rf"while .* stepped concurrently"):
            call()
    assert _equal(_snapshot(obj), before)
    call()              # free again: the call runs


def test_lbfgs_closure_blocks_other_thread_is_refused():
    """A real second thread, deterministically overlapping: the first LBFGS step waits inside
    its closure while the second thread calls step()."""
    x = [np.array([1.0, -2.0, 3.0])]
    opt = fo.LBFGS(x, max_iter=3)
    inside, release = threading.Event(), threading.Event()

    def closure():
        inside.set()
        release.wait(10)
        return float(x[0] @ x[0]), [2 * x[0]]

    first = threading.Thread(target=lambda: opt.step(closure))
    first.start()
    assert inside.wait(10)
    try:
        with pytest.raises(ConcurrentStepError, match=r"LBFGS\.step\(\)"):
            opt.step(lambda: (0.0, [np.zeros(3)]))
    finally:
        release.set()
        first.join()
    assert np.all(np.abs(x[0]) < 1.0)      # the first step ran to the end: x moved to ~0


def test_reentrant_step_is_refused():
    """A step re-entered from inside itself (an LBFGS closure stepping the optimizer) is
    refused like a second thread."""
    x = [np.array([1.0, 2.0])]
    opt = fo.LBFGS(x, max_iter=1)
    seen = []

    def closure():
        try:
            opt.step(lambda: (0.0, [np.zeros(2)]))
        except ConcurrentStepError as exc:
            seen.append(exc)
        return float(x[0] @ x[0]), [2 * x[0]]

    opt.step(closure)
    assert len(seen) >= 1


def test_grad_mutated_during_steps_does_not_crash():
    """The user's race, documented: another thread rewrites the grad buffer while steps read
    it. The result is undefined, but the process must not crash and steps must complete."""
    rng = np.random.default_rng(5)
    p = [rng.standard_normal(N).astype(np.float32)]
    g = rng.standard_normal(N).astype(np.float32)
    opt = fo.AdamW(p)
    values = [rng.standard_normal(N).astype(np.float32) for _ in range(2)]
    stop = threading.Event()

    def writer():
        k = 0
        while not stop.is_set():
            np.copyto(g, values[k % 2])
            g[k % N] = np.nan if k % 7 == 0 else g[k % N]
            k += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        for _ in range(100):
            assert opt.step([g]) is True
            fo.clip_grad_norm_([g], 1.0)
    finally:
        stop.set()
        t.join()
    assert int(opt.state[0]["step"]) == 100
