"""Many tensors: tables built once, per-step Python work that does not grow with the tensor
count, and work units that balance over threads whatever the tensor sizes."""

import sys

import numpy as np
import pytest

import fusedoptim as fo
from fusedoptim import _kernels

CHUNK = _kernels.CHUNK_ELEMENTS


def _threads_per_element(params, num_threads):
    """Run the driver's diagnostic kernel, which writes into each element the number of the
    OpenMP thread that ran it; return the concatenated result."""
    for p in params:
        p.fill(-1)
    plan = _kernels.Plan(params, [None] * len(params), 0, 0,
                         [f"g{i}" for i in range(len(params))])
    plan.bind([np.zeros_like(p) for p in params])     # calloc'd and never read: no memory
    plan.run(_kernels.KERNEL_IDS["_thread_id"], num_threads)
    return plan, np.concatenate([p.ravel() for p in params])


def test_one_big_tensor_and_500_tiny_ones_split_evenly():
    rng = np.random.default_rng(0)
    tiny = [np.zeros(int(k), np.float32) for k in rng.integers(1, 40, size=500)]
    params = [np.zeros(10_000_000, np.float32)] + tiny
    plan, who = _threads_per_element(params, 2)
    units = plan.unit_sizes()
    total = sum(p.size for p in params)
    # The unit table: CHUNK-position units over the tensors laid end to end, whatever their
    # sizes (the tiny ones share units with the big one's tail and with each other); a tensor
    # that crosses a unit boundary starts on a BLOCK boundary (_expected_line below).
    line, padding = _expected_line([p.size for p in params])
    assert units.sum() == total and line == total + padding
    assert (units <= CHUNK).all() and (units > 0).all()
    assert plan.nunits == -(-line // CHUNK)
    # What the driver did with it: every element ran, and every thread got an equal share
    # to within one unit plus the padding (schedule(static) over equal units).
    assert (who >= 0).all()
    if fo._kernels.openmp_enabled():
        for nt in (2, 3):
            _, who = _threads_per_element(params, nt)
            counts = np.bincount(who.astype(np.int64), minlength=nt)
            assert len(counts) == nt
            assert (abs(counts - total / nt) <= CHUNK + padding).all(), (counts, padding)


BLOCK = _kernels.BLOCK_ELEMENTS


def _expected_line(sizes):
    """The unit table's rule, restated: (length of the padded line, total padding)."""
    pos = padding = 0
    for n in sizes:
        if n and pos % BLOCK and pos % CHUNK + n > CHUNK:
            padding += BLOCK - pos % BLOCK
            pos += BLOCK - pos % BLOCK
        pos += n
    return pos, padding


@pytest.mark.parametrize("seed", range(6))
def test_no_block_of_any_tensor_spans_two_units(seed):
    """Block-aligned units: every cut inside a tensor is at a multiple of BLOCK, every unit
    covers at most CHUNK positions of the padded line, and the table follows the rule."""
    rng = np.random.default_rng(seed)
    kinds = [rng.integers(0, 3, size=60), rng.integers(1, 300, size=60),
             rng.integers(1, 3 * CHUNK, size=60)]
    sizes = [int(k) for k in np.where(rng.random(60) < 0.5, kinds[1],
                                      np.where(rng.random(60) < 0.5, kinds[0], kinds[2]))]
    params = [np.zeros(n, np.float32) for n in sizes]
    plan = _kernels.Plan(params, [None] * len(params), 0, 0, [str(i) for i in range(60)])
    seg_t, seg_start, seg_len, unit_begin = plan.segments()
    assert (seg_start % BLOCK == 0).all()
    # Each tensor's segments cover it exactly, front to back.
    for t, n in enumerate(sizes):
        mine = seg_t == t
        assert seg_len[mine].sum() == n
        assert (seg_start[mine] == np.concatenate([[0], np.cumsum(seg_len[mine])[:-1]])).all()
    # Each unit's segments lie in one CHUNK of the padded line.
    starts, pos = [], 0
    for n in sizes:
        if n and pos % BLOCK and pos % CHUNK + n > CHUNK:
            pos += BLOCK - pos % BLOCK
        starts.append(pos)
        pos += n
    line_lo = np.array(starts)[seg_t] + seg_start
    line_hi = line_lo + seg_len - 1
    for u in range(len(unit_begin) - 1):
        s = slice(unit_begin[u], unit_begin[u + 1])
        assert unit_begin[u + 1] > unit_begin[u]
        assert (line_lo[s] // CHUNK == line_lo[s][0] // CHUNK).all()
        assert (line_hi[s] // CHUNK == line_lo[s][0] // CHUNK).all()
    assert plan.nunits == -(-_expected_line(sizes)[0] // CHUNK)


def _grads(rng, params):
    return [rng.standard_normal(p.shape).astype(p.dtype) for p in params]


def test_tables_are_built_once_and_rebuilt_only_when_needed(rng):
    params = [rng.standard_normal(n).astype(np.float32) for n in (3, 40_000, 1, 7)]
    opt = fo.Adam(params)
    opt.step(_grads(rng, params))
    plan = opt._caches[0].plan
    for _ in range(3):                       # fresh grad arrays each step: only re-pointed
        opt.step(_grads(rng, params))
    opt.step([None, *_grads(rng, params[1:])])
    opt.param_groups[0]["lr"] = 1e-2         # hyperparameters are scalars, not tables
    opt.step(_grads(rng, params))
    assert opt._caches[0].plan is plan
    # The param set changes: the new group gets its own plan, the old one is kept.
    extra = rng.standard_normal(5).astype(np.float32)
    opt.add_param_group({"params": [extra]})
    opt.step(_grads(rng, params + [extra]))
    assert opt._caches[0].plan is plan
    # load_state_dict replaces every buffer: the tables are rebuilt from the new ones.
    opt.load_state_dict(opt.state_dict())
    opt.step(_grads(rng, params + [extra]))
    new = opt._caches[0].plan
    assert new is not plan and opt.state[1]["exp_avg"] is not None
    assert opt.state[1]["step"] == 8


def test_replacing_a_param_after_construction_is_rejected_not_ignored(rng):
    """The tables point at the arrays given at construction. A param swapped into the group
    afterwards used to be silently ignored while the old array kept being updated (or was
    written after being freed)."""
    a, b = np.zeros(4, np.float32), np.zeros(4, np.float32)
    opt = fo.SGD([a, b], lr=0.1)
    g = [np.ones(4, np.float32)] * 2
    opt.step(g)
    replacement = np.zeros(4, np.float32)
    opt.param_groups[0]["params"][1] = replacement
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\] changed.*new optimizer"):
        opt.step(g)
    assert (a == -0.1).all() and (b == -0.1).all() and not replacement.any()
    opt.param_groups[0]["params"] = [a, replacement]
    with pytest.raises(ValueError, match="changed after the optimizer was built"):
        opt.step(g)
    opt.param_groups[0]["params"] = [a, b]   # the original arrays again: fine
    opt.step(g)
    assert (b == np.float32(-0.1) * 2).all()


def _count_python_work(fn):
    """Python lines executed plus C functions called from Python during fn(): a count of
    the interpreter-level operations, independent of timing noise."""
    count = [0]

    def tracer(frame, event, arg):
        count[0] += 1           # 'call' and every 'line'
        return tracer

    def profiler(frame, event, arg):
        if event == "c_call":
            count[0] += 1

    sys.settrace(tracer)
    sys.setprofile(profiler)
    try:
        fn()
    finally:
        sys.settrace(None)
        sys.setprofile(None)
    return count[0]


@pytest.mark.parametrize("layout", ["list", "dict", "groups", "arena", "arena-grads",
                                    "arena-views"])
@pytest.mark.parametrize("cls", [fo.AdamW, fo.NAdam, fo.SGD])
def test_python_work_per_step_does_not_grow_with_the_tensor_count(cls, layout):
    """step() on 1000 tensors runs exactly as many Python lines and calls as on 10: the only
    per-tensor work is the C-level grad binding (NAdam covers per-tensor scalar state, SGD
    the momentum-buffer path)."""
    kw = dict(momentum=0.9) if cls is fo.SGD else {}

    def work(n):
        shapes = {f"w{i}": (3,) for i in range(n)}
        if layout.startswith("arena"):
            arena = fo.FlatParams(shapes)
            opt = cls(arena, **kw)
            # step(), step(arena.grads), and a dict of the same views (checked to tile)
            grads = {"arena": None, "arena-grads": arena.grads,
                     "arena-views": dict(arena.grads)}[layout]
            arena.grads["w0"][...] = 1.0
        else:
            params = {k: np.ones(s, np.float32) for k, s in shapes.items()}
            grads = {k: np.ones(s, np.float32) for k, s in shapes.items()}
            if layout == "dict":
                opt = cls(params, **kw)
            else:
                grads = list(grads.values())
                arrays = list(params.values())
                opt = cls(arrays if layout == "list" else
                          [{"params": arrays[:n // 2]}, {"params": arrays[n // 2:]}], **kw)
        opt.step(grads)
        opt.step(grads)         # state created, tables built: from here on, the fast path
        return _count_python_work(lambda: opt.step(grads))

    assert work(1000) == work(10)


def test_a_groups_state_lives_in_one_buffer_placed_like_its_params(rng):
    """One allocation per state slot for the whole group, views in param order, each view
    at its param's address modulo 4096 bytes (64 for params under 64 KiB): the placement
    the kernel was measured fastest with (see fusedoptim._layout.GroupLayout)."""
    params = [rng.standard_normal(n).astype(np.float32) for n in (10, 3, 40_000, 1, 0, 7)]
    opt = fo.Adam(params)
    opt.step(_grads(rng, params))
    for slot in ("exp_avg", "exp_avg_sq"):
        views = [opt.state[i][slot] for i in range(len(params))]
        assert len({id(v.base) for v in views}) == 1
        starts = [v.ctypes.data for v in views if v.size]
        assert starts == sorted(starts)
        for p, v in zip(params, views):
            if p.size:
                mod = 4096 if p.nbytes >= 65536 else 64
                assert (v.ctypes.data - p.ctypes.data) % mod == 0


def test_bench_many_tensors_section_runs_and_reports_the_targets():
    import subprocess
    out = subprocess.run([sys.executable, "-m", "fusedoptim", "bench", "--many-tensors",
                          "30x100", "--threads", "1", "--repeat", "1", "--min-time", "0.001",
                          "--no-torch"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for label in ("fo, separate tensors", "fo, one flat tensor", "fo, FlatParams arena",
                  "kernel on the arena's flat buffer", "target separate / one flat",
                  "target arena / kernel"):
        assert label in text, label
    bad = subprocess.run([sys.executable, "-m", "fusedoptim", "bench", "--many-tensors", "0x5"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "COUNTxSIZE" in bad.stderr and "'0x5'" in bad.stderr
