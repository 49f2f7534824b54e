"""Checkpoint files (issue 16): fo.save / fo.load.

* Resuming from fo.load continues bitwise the same trajectory as never stopping, for every
  optimizer class in fusedoptim.optim.__all__ (CONFIGS below says how to build and step each;
  an optimizer without an entry fails loudly), with a scheduler and the params in the file;
  int8/int4 state, bfloat16 params with master weights and FlatParams arenas too.
* Never pickle: a crafted pickle payload is refused and never runs.
* Checked: truncated files, flipped bytes, a wrong class, mismatched shapes, dtypes and param
  count, a newer format version: each refused with an error naming what differs, with the
  optimizer, scheduler and params bitwise unchanged.
* Atomic: a child saving in a loop is SIGKILLed at random moments 50 times; the file always
  loads and is one complete version.
* ``fusedoptim inspect`` prints the header's story without loading anything.
"""

import json
import os
import pickle
import random
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

import fusedoptim as fo
from fusedoptim import CheckpointError
from fusedoptim.__main__ import main as cli
from fusedoptim.checkpoint import FORMAT_VERSION

pytest.importorskip("safetensors")
pytest.importorskip("xxhash")

# -- the config table: every optimizer class -------------------------------------------------
# name -> dict(shapes=..., kw=..., kind=...). kind: "dense" (opt.step(grads) with a list of
# dense grads in param order), "sparse" (SparseGrad per param), "closure" (LBFGS: step(closure)),
# "aux" (MuonWithAuxAdam: groups with use_muon).
SHAPES = {"w": (6, 5), "b": (5,), "s": ()}
MATRICES = {"w": (6, 5), "v": (5, 7)}
CONFIGS = {
    "Adam": dict(kw=dict(lr=1e-2, amsgrad=True, weight_decay=0.01)),
    "AdamW": dict(kw=dict(lr=1e-2, weight_decay=0.1)),
    "Adamax": dict(kw=dict(lr=1e-2)),
    "NAdam": dict(kw=dict(lr=1e-2)),
    "RAdam": dict(kw=dict(lr=1e-2)),
    "Lion": dict(kw=dict(lr=1e-3, weight_decay=0.1)),
    "Rprop": dict(kw=dict(lr=1e-2)),
    "ASGD": dict(kw=dict(lr=1e-2, t0=2)),
    "SGD": dict(kw=dict(lr=1e-2, momentum=0.9, nesterov=True)),
    "Adagrad": dict(kw=dict(lr=1e-2, lr_decay=0.01)),
    "RMSprop": dict(kw=dict(lr=1e-2, momentum=0.5, centered=True)),
    "Adadelta": dict(kw=dict(lr=1.0)),
    "LAMB": dict(kw=dict(lr=1e-2, weight_decay=0.01)),
    "LARS": dict(kw=dict(lr=0.1, weight_decay=1e-4)),
    "SignSGD": dict(kw=dict(lr=1e-2, momentum=0.9)),
    "SparseAdam": dict(kw=dict(lr=1e-2), kind="sparse", shapes={"e": (9, 4), "f": (7, 3)}),
    "Adafactor": dict(kw=dict(lr=1e-2)),
    "LBFGS": dict(kw=dict(lr=0.5, max_iter=3, history_size=4), kind="closure",
                  dtype=np.float64),
    "Muon": dict(kw=dict(lr=1e-2), shapes=MATRICES),
    "MuonWithAuxAdam": dict(kind="aux"),
    # Issue 13's optimizers, written from their signatures on main while they were being merged
    # (they passed there, through an overlay of main's built package): used once they exist.
    "ScheduleFreeAdamW": dict(kw=dict(lr=1e-2, warmup_steps=2)),
    "ScheduleFreeSGD": dict(kw=dict(lr=1e-2, warmup_steps=2)),
    "AdEMAMix": dict(kw=dict(lr=1e-2, t_alpha=4, t_beta3=4)),
    "ADOPT": dict(kw=dict(lr=1e-2, weight_decay=0.01)),
    "MADGRAD": dict(kw=dict(lr=1e-2, weight_decay=0.01)),
    "Yogi": dict(kw=dict(lr=1e-2)),
    "Prodigy": dict(kw=dict(lr=1.0)),
    "Adan": dict(kw=dict(lr=1e-2, weight_decay=0.02)),
    "AdaBelief": dict(kw=dict(lr=1e-2, weight_decay=0.01)),
}
#: names exported by fusedoptim.optim that are not optimizers
NOT_OPTIMIZERS = {"SparseGrad"}

STEPS, STOP = 6, 3


def optimizer_names():
    return [n for n in fo.optim.__all__ if n not in NOT_OPTIMIZERS]


def _config(name):
    cfg = CONFIGS.get(name)
    if cfg is None:
        pytest.fail(f"fusedoptim.optim exports {name!r}, which has no entry in CONFIGS in "
                    f"tests/test_checkpoint.py: add the new optimizer there (its constructor "
                    f"arguments, and its kind of step if it is not step(dense grads)), so that "
                    f"saving and resuming it through fo.save/fo.load is tested")
    return cfg


def _params(cfg, seed=0):
    rng = np.random.default_rng(seed)
    shapes = cfg.get("shapes", SHAPES)
    dtype = cfg.get("dtype", np.float32)
    return {k: np.asarray(rng.standard_normal(s), dtype) for k, s in shapes.items()}


def _build(name, params):
    cfg = _config(name)
    cls = getattr(fo, name)
    kind = cfg.get("kind", "dense")
    if kind == "aux":
        return cls([{"params": {"w": params["w"]}, "use_muon": True, "lr": 0.02},
                    {"params": {k: v for k, v in params.items() if k != "w"},
                     "use_muon": False, "lr": 3e-3}])
    return cls(params, **cfg["kw"])


def _grads(params, k):
    rng = np.random.default_rng(1000 + k)
    return [np.asarray(rng.standard_normal(p.shape), p.dtype) for p in params.values()]


def _step(name, opt, params, k):
    kind = _config(name).get("kind", "dense")
    if kind == "sparse":
        rng = np.random.default_rng(2000 + k)
        grads = []
        for p in params.values():
            idx = rng.integers(0, p.shape[0], 4)
            grads.append(fo.SparseGrad(idx, rng.standard_normal((4,) + p.shape[1:])
                                       .astype(p.dtype)))
        opt.step(grads)
    elif kind == "closure":
        target = _grads(params, k)

        def closure():
            loss = sum(float(np.sum(0.5 * (p - t) ** 2)) for p, t in
                       zip(params.values(), target))
            return loss, [np.asarray(p - t) for p, t in zip(params.values(), target)]
        opt.step(closure)
    else:
        opt.step(_grads(params, k))


def _scheduler(opt):
    return fo.lr_scheduler.CosineAnnealingLR(opt, T_max=4, eta_min=1e-4)


def _same(a, b, where="value"):
    """Bitwise equality of nested state (arrays by their bytes and dtype)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert np.array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8)), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (where, list(a), list(b))
        for k in a:
            _same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and a != a:
        assert b != b, where
    else:
        assert type(a) is type(b) and a == b, (where, a, b)


@pytest.mark.parametrize("name", optimizer_names())
def test_resume_is_bitwise_the_unbroken_run(name, tmp_path):
    path = tmp_path / "ckpt.safetensors"
    params = _params(_config(name))
    opt = _build(name, params)
    sched = _scheduler(opt)
    for k in range(STEPS):
        if k == STOP:
            fo.save(path, opt, scheduler=sched, params=params, extra={"epoch": k, "tag": name})
        _step(name, opt, params, k)
        sched.step()

    params2 = {k: np.zeros_like(v) for k, v in _params(_config(name), seed=1).items()}
    opt2 = _build(name, params2)
    sched2 = _scheduler(opt2)
    extra = fo.load(path, opt2, scheduler=sched2, params=params2)
    assert extra == {"epoch": STOP, "tag": name}
    for k in range(STOP, STEPS):
        _step(name, opt2, params2, k)
        sched2.step()
    _same(params2, params, "params")
    _same(opt2.state_dict(), opt.state_dict(), "state_dict")
    _same(sched2.state_dict(), sched.state_dict(), "scheduler")


def test_config_table_names_every_optimizer():
    """The table must not silently miss a class: every exported optimizer has an entry."""
    missing = [n for n in optimizer_names() if n not in CONFIGS]
    assert not missing, (f"add {missing} to CONFIGS in tests/test_checkpoint.py so their "
                         f"checkpoints are tested")


PRECISION = {
    "int8": dict(state_dtype="int8", min_quantized_size=256),
    "int4": dict(state_dtype="int4", min_quantized_size=256),
    "bfloat16-master": dict(master_weights=True),
    "bfloat16-state": dict(state_dtype="bfloat16"),
    "flat": {},
}


@pytest.mark.parametrize("variant", list(PRECISION))
def test_resume_low_precision_and_flat(variant, tmp_path):
    import ml_dtypes
    path = tmp_path / "ckpt.safetensors"
    shapes = {"w": (48, 40), "b": (40,)}
    dtype = np.dtype(ml_dtypes.bfloat16) if variant == "bfloat16-master" else np.float32

    def make(seed):
        rng = np.random.default_rng(seed)
        arrays = {k: np.asarray(rng.standard_normal(s), dtype) for k, s in shapes.items()}
        if variant == "flat":
            arena = fo.FlatParams.from_arrays(arrays)
            return arena, arena.params, arena
        return arrays, arrays, arrays

    def run(opt, views, sched, ks, arena):
        for k in ks:
            g = _grads(dict(views), k)
            if arena is not None:
                for dst, src in zip(arena.grads.values(), g):
                    dst[...] = src
                opt.step()
            else:
                opt.step([x.astype(dtype) for x in g])
            sched.step()

    holder, views, saved_params = make(0)
    opt = fo.AdamW(holder, lr=1e-2, **PRECISION[variant])
    sched = _scheduler(opt)
    arena = holder if variant == "flat" else None
    run(opt, views, sched, range(STOP), arena)
    fo.save(path, opt, scheduler=sched, params=saved_params)
    run(opt, views, sched, range(STOP, STEPS), arena)

    holder2, views2, params2 = make(5)
    opt2 = fo.AdamW(holder2, lr=1e-2, **PRECISION[variant])
    sched2 = _scheduler(opt2)
    fo.load(path, opt2, scheduler=sched2, params=params2)
    run(opt2, views2, sched2, range(STOP, STEPS), holder2 if variant == "flat" else None)
    for k in views:
        assert np.array_equal(views2[k].view(np.uint8), views[k].view(np.uint8)), k
    _same(opt2.state_dict(), opt.state_dict(), "state_dict")
    if variant in ("int8", "int4"):
        assert any(k.endswith("_absmax") or k.endswith("_rank1") or k.endswith("_qmap")
                   for st in opt.state_dict()["state"].values() for k in st)


# -- refusals: nothing modified ------------------------------------------------------------------

def _setup(tmp_path, name="AdamW", seed=0, shapes=None, dtype=np.float32):
    rng = np.random.default_rng(seed)
    shapes = shapes or {"w": (6, 5), "b": (5,)}
    params = {k: np.asarray(rng.standard_normal(s), dtype) for k, s in shapes.items()}
    opt = getattr(fo, name)(params, lr=1e-2)
    sched = _scheduler(opt)
    for k in range(2):
        opt.step(_grads(params, k))
        sched.step()
    return params, opt, sched


def _snapshot(params, opt, sched):
    return ({k: v.copy() for k, v in params.items()}, opt.state_dict(),
            [dict(g, params=None) for g in opt.param_groups], sched.state_dict())


@pytest.fixture
def saved(tmp_path):
    params, opt, sched = _setup(tmp_path)
    path = tmp_path / "good.safetensors"
    fo.save(path, opt, scheduler=sched, params=params, extra={"note": "good"})
    return path


def _target(tmp_path, **kw):
    params, opt, sched = _setup(tmp_path, seed=9, **kw)
    return params, opt, sched, _snapshot(params, opt, sched)


def _refused(path, target, match):
    params, opt, sched, before = target
    with pytest.raises(CheckpointError, match=match):
        fo.load(path, opt, scheduler=sched, params=params)
    _same(_snapshot(params, opt, sched), before, "unchanged")


def test_truncated_file_is_refused(saved, tmp_path):
    data = saved.read_bytes()
    target = _target(tmp_path)
    for cut in (0, 4, 9, 200, len(data) // 2, len(data) - 1):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        _refused(bad, target, "truncated|corrupted|not a readable")


def _header_len(data):
    return 8 + int.from_bytes(data[:8], "little")


def test_flipped_bytes_are_refused(saved, tmp_path):
    data = saved.read_bytes()
    target = _target(tmp_path)
    start = _header_len(data)
    # a flipped bit in tensor data: the tensor's checksum names it
    bad = bytearray(data)
    bad[-3] ^= 0x10
    (tmp_path / "flip.safetensors").write_bytes(bytes(bad))
    _refused(tmp_path / "flip.safetensors", target, r"tensor '.*' fails its xxh3_64 checksum")
    # a flipped byte anywhere at all (header or data): always refused, nothing modified
    rnd = random.Random(3)
    for pos in [rnd.randrange(len(data)) for _ in range(40)] + [start - 20, start + 1]:
        bad = bytearray(data)
        bad[pos] ^= 1 << rnd.randrange(8)
        p = tmp_path / "flip_any.safetensors"
        p.write_bytes(bytes(bad))
        _refused(p, target, None)


def test_wrong_class_is_refused(saved, tmp_path):
    params, opt, sched = _setup(tmp_path, name="Adam")
    before = _snapshot(params, opt, sched)
    with pytest.raises(CheckpointError, match=r"holds a AdamW's state; this optimizer is a "
                                              r"Adam"):
        fo.load(saved, opt, scheduler=sched, params=params)
    _same(_snapshot(params, opt, sched), before)


def test_mismatched_shapes_dtypes_count_are_refused(saved, tmp_path):
    _refused(saved, _target(tmp_path, shapes={"w": (5, 6), "b": (5,)}),
             r"param 0 \('w'\) has shape \(6, 5\) in the checkpoint, \(5, 6\) in this AdamW")
    _refused(saved, _target(tmp_path, dtype=np.float64),
             r"param 0 \('w'\) has dtype float32 in the checkpoint, float64 in this AdamW")
    _refused(saved, _target(tmp_path, shapes={"w": (6, 5), "b": (5,), "c": (2,)}),
             r"state for 2 params, this AdamW has 3")


def test_scheduler_and_params_mismatch_are_refused(saved, tmp_path):
    params, opt, sched, before = _target(tmp_path)
    other = fo.lr_scheduler.StepLR(opt, step_size=3)
    before = _snapshot(params, opt, sched)
    with pytest.raises(CheckpointError, match="holds a CosineAnnealingLR's state; this "
                                              "scheduler is a StepLR"):
        fo.load(saved, opt, scheduler=other, params=params)
    _same(_snapshot(params, opt, sched), before)
    renamed = {"u": params["w"], "b": params["b"]}
    with pytest.raises(CheckpointError, match=r"params are named \['w', 'b'\], these "
                                              r"\['u', 'b'\]"):
        fo.load(saved, opt, scheduler=sched, params=renamed)
    _same(_snapshot(params, opt, sched), before)
    arena = fo.FlatParams({"w": (6, 5), "b": (5,)})
    with pytest.raises(CheckpointError, match="as a dict, not a FlatParams"):
        fo.load(saved, opt, scheduler=sched, params=arena)
    _same(_snapshot(params, opt, sched), before)


def _rewrite(src, dst, **meta):
    """Copy a checkpoint with some metadata replaced (tensors unchanged)."""
    from safetensors import safe_open
    from safetensors.numpy import save_file
    with safe_open(src, framework="np") as f:
        metadata = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    metadata.update(meta)
    save_file(tensors, dst, metadata=metadata)


def test_newer_format_version_is_refused(saved, tmp_path):
    newer = tmp_path / "newer.safetensors"
    _rewrite(saved, newer, format_version=str(FORMAT_VERSION + 1))
    _refused(newer, _target(tmp_path), rf"format version {FORMAT_VERSION + 1}, by a newer "
                                       rf"fusedoptim; this one reads up to version "
                                       rf"{FORMAT_VERSION}")


def test_edited_content_is_refused(saved, tmp_path):
    """A header edited to say something else (its checksum not updated) is refused."""
    from safetensors import safe_open
    with safe_open(saved, framework="np") as f:
        content = json.loads(f.metadata()["content"])
    content["optimizer"]["class"] = "Adam"
    edited = tmp_path / "edited.safetensors"
    _rewrite(saved, edited, content=json.dumps(content))
    _refused(edited, _target(tmp_path), "JSON content fails its xxh3_64 checksum")


def test_other_safetensors_file_is_refused(tmp_path):
    from safetensors.numpy import save_file
    path = tmp_path / "model.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, path)
    _refused(path, _target(tmp_path), "not a fusedoptim checkpoint")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        # os.mkdir, not a shell command: CI images need not ship coreutils
        return (os.mkdir, (str(self.marker),))


def test_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    assert pickle.loads(pickle.dumps(_Payload(marker))) is None and marker.is_dir()  # it is live
    marker.rmdir()
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"state": _Payload(marker)}, protocol=2))
    _refused(path, _target(tmp_path), "not a safetensors file")
    # a pickle hidden in a valid safetensors header is only ever JSON-parsed text
    from safetensors.numpy import save_file
    hidden = tmp_path / "hidden.safetensors"
    save_file({"x": np.zeros(2, np.float32)}, hidden,
              metadata={"format": "fusedoptim.checkpoint", "format_version": "1",
                        "checksum": "xxh3_64",
                        "content": pickle.dumps(_Payload(marker)).decode("latin-1"),
                        "content_checksum": "0"})
    _refused(hidden, _target(tmp_path), "checksum")
    assert not marker.exists()


def test_missing_and_directory_paths(tmp_path):
    target = _target(tmp_path)
    _refused(tmp_path / "nope.safetensors", target, "no such file")
    _refused(tmp_path, target, "is a directory")


def test_save_refuses_what_is_not_data(tmp_path):
    params, opt, sched = _setup(tmp_path)
    path = tmp_path / "x.safetensors"
    with pytest.raises(TypeError, match=r"extra/fn is a function"):
        fo.save(path, opt, extra={"fn": lambda: 0})
    assert not path.exists()
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    with pytest.raises(TypeError, match="params must be a FlatParams or a dict"):
        fo.save(path, opt, params=[params["w"]])
    with pytest.raises(TypeError, match="optimizer must be a fusedoptim optimizer"):
        fo.save(path, object())


def test_extra_round_trips_values(tmp_path):
    params, opt, sched = _setup(tmp_path)
    extra = {"epoch": 3, "loss": 0.125, "nan": float("nan"), "inf": -float("inf"),
             "pair": (1, 2.5), "ints": {1: "a"}, "rng": np.arange(4, dtype=np.uint64),
             "f32": np.float32(1.5), "none": None, "$weird": [True, "s"]}
    path = tmp_path / "x.safetensors"
    fo.save(path, opt, extra=extra)
    got = fo.load(path, opt)
    _same(got, extra, "extra")


def test_a_nan_keeps_its_sign_and_payload(tmp_path):
    """A diverged run's NaN scalar state (Prodigy's d_numerator: x86's negative default NaN)
    resumes bitwise: JSON's NaN alone lost the sign (found by tests/property)."""
    params, opt, sched = _setup(tmp_path)
    nans = [struct.unpack("<d", bytes.fromhex(h))[0]
            for h in ("000000000000f8ff", "000000000000f87f", "0100000000f0ff7f")]
    path = tmp_path / "x.safetensors"
    fo.save(path, opt, extra={"nans": nans, "f32": np.float32(nans[0])})
    got = fo.load(path, opt)
    assert [struct.pack("<d", x) for x in got["nans"]] == [struct.pack("<d", x) for x in nans]
    assert got["f32"].tobytes() == np.float32(nans[0]).tobytes()


# -- atomic writes under SIGKILL ---------------------------------------------------------------

def _sigkill_loop(directory):
    """A child saves versions 1, 2, 3, ... in a loop (each version's params all equal to its
    number, and extra={"version": n}); it is SIGKILLed at a random moment, 50 times. After each
    kill the file loads, its checksums pass, and it is one complete version. Returns the
    number of kills that interrupted a save.

    Runs in a fresh interpreter (see the test): fork() there is safe, as no other thread
    exists, where the test process may hold torch's, JAX's or OpenMP's threads."""
    path = os.path.join(directory, "ckpt.safetensors")
    n = 300_000                               # ~1.2 MB of params: a save takes a while
    params = {"w": np.zeros(n, np.float32)}
    opt = fo.SGD(params, lr=0.1)
    rnd = random.Random(16)
    version = 0
    versions_seen = set()
    torn = 0
    for kill in range(50):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:                          # the child: save forever
            try:
                os.close(read_fd)
                v = version
                while True:
                    v += 1
                    params["w"].fill(v)
                    fo.save(path, opt, params=params, extra={"version": v})
                    os.write(write_fd, b"x")
            finally:
                os._exit(1)
        os.close(write_fd)
        assert os.read(read_fd, 1) == b"x"    # at least one save completed
        time.sleep(rnd.uniform(0, 0.02))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        while os.read(read_fd, 4096):         # drain: the count of completed saves
            pass
        os.close(read_fd)
        check = {"w": np.empty(n, np.float32)}
        extra = fo.load(path, opt, params=check)
        version = extra["version"]
        assert np.all(check["w"] == version), f"torn file after kill {kill}"
        versions_seen.add(version)
        for stray in os.listdir(directory):
            if stray.endswith(".tmp"):        # a save killed mid-write: never read, removed
                os.unlink(os.path.join(directory, stray))
                torn += 1
    assert len(versions_seen) == 50            # every kill left a newer complete version
    return torn


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_sigkill_during_saves_never_leaves_a_torn_file(tmp_path):
    # The fork loop runs in a fresh, single-threaded interpreter (one OpenMP thread): forking
    # this test process, which may hold torch's, JAX's and OpenMP's threads, risks a deadlock
    # in the child (CPython warns of it).
    script = ("import sys; sys.path.insert(0, sys.argv[2]); import test_checkpoint as t; "
              "print('torn', t._sigkill_loop(sys.argv[1]))")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path),
                           os.path.dirname(__file__)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    torn = int(done.stdout.split("torn")[-1])
    assert 0 <= torn <= 50
    print(f"{torn} of 50 kills interrupted a save (left its temporary file)")


# -- inspect -------------------------------------------------------------------------------------

def test_inspect_prints_the_header(saved, capsys):
    assert cli(["inspect", str(saved)]) == 0
    out = capsys.readouterr().out
    assert "optimizer: AdamW, 2 params in 1 group(s)" in out
    assert "lr=" in out and "betas=(0.9, 0.999)" in out and "weight_decay=0.01" in out
    assert "step counts 2" in out
    assert "exp_avg float32[6, 5]" in out and "exp_avg_sq float32[5]" in out
    assert "state bytes: 280" in out
    assert "scheduler: CosineAnnealingLR: last_epoch=2" in out
    assert "params: dict of 2 arrays" in out
    assert "extra: {'note': 'good'}" in out


@pytest.mark.parametrize("kind", ["missing", "garbage", "directory", "truncated"])
def test_inspect_bad_paths_one_line(kind, saved, tmp_path, capsys):
    path = {"missing": tmp_path / "none.safetensors", "directory": tmp_path,
            "garbage": tmp_path / "g.safetensors",
            "truncated": tmp_path / "t.safetensors"}[kind]
    if kind == "garbage":
        path.write_bytes(b"\x80\x04 not a checkpoint at all" * 3)
    if kind == "truncated":
        path.write_bytes(saved.read_bytes()[:100])
    assert cli(["inspect", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert captured.err.startswith("fusedoptim inspect: ")


def test_inspect_cli_subprocess(saved):
    """The installed entry point: exit status and no traceback."""
    import subprocess
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    run = subprocess.run([sys.executable, "-m", "fusedoptim", "inspect", str(saved) + ".x"],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 1 and "no such file" in run.stderr
    assert "Traceback" not in run.stderr


# -- every scheduler --------------------------------------------------------------------------

def _chained(opt):
    ls = fo.lr_scheduler
    return ls.ChainedScheduler([ls.ConstantLR(opt, factor=0.5, total_iters=2),
                                ls.ExponentialLR(opt, gamma=0.9)])


SCHEDULERS = {
    "LambdaLR": lambda o: fo.lr_scheduler.LambdaLR(o, lambda e: 0.9 ** e),
    "MultiplicativeLR": lambda o: fo.lr_scheduler.MultiplicativeLR(o, lambda e: 0.95),
    "StepLR": lambda o: fo.lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
    "MultiStepLR": lambda o: fo.lr_scheduler.MultiStepLR(o, milestones=[2, 4, 4]),
    "ConstantLR": lambda o: fo.lr_scheduler.ConstantLR(o, factor=0.5, total_iters=3),
    "LinearLR": lambda o: fo.lr_scheduler.LinearLR(o, total_iters=4),
    "ExponentialLR": lambda o: fo.lr_scheduler.ExponentialLR(o, gamma=0.9),
    "PolynomialLR": lambda o: fo.lr_scheduler.PolynomialLR(o, total_iters=5, power=2.0),
    "CosineAnnealingLR": lambda o: fo.lr_scheduler.CosineAnnealingLR(o, T_max=4),
    "CosineAnnealingWarmRestarts": lambda o: fo.lr_scheduler.CosineAnnealingWarmRestarts(
        o, T_0=2, T_mult=2),
    "CyclicLR": lambda o: fo.lr_scheduler.CyclicLR(o, base_lr=0.01, max_lr=0.1,
                                                   step_size_up=2),
    "OneCycleLR": lambda o: fo.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=20),
    "ReduceLROnPlateau": lambda o: fo.lr_scheduler.ReduceLROnPlateau(o, patience=0,
                                                                     factor=0.5),
    "SequentialLR": lambda o: fo.lr_scheduler.SequentialLR(
        o, [fo.lr_scheduler.ConstantLR(o, factor=0.5, total_iters=2),
            fo.lr_scheduler.ExponentialLR(o, gamma=0.9)], milestones=[3]),
    "ChainedScheduler": _chained,
    "InverseSqrtLR": lambda o: fo.lr_scheduler.InverseSqrtLR(o, timescale=2.0),
    "WarmupLR": lambda o: fo.lr_scheduler.WarmupLR(
        fo.lr_scheduler.CosineAnnealingLR(o, T_max=6), warmup_steps=2),
    "SWALR": lambda o: fo.lr_scheduler.SWALR(o, swa_lr=0.05, anneal_epochs=3),
}


def _sched_step(sched, k):
    if isinstance(sched, fo.lr_scheduler.ReduceLROnPlateau):
        sched.step(1.0)                     # never improves: the lr is cut every step
    else:
        sched.step()


@pytest.mark.parametrize("name", [n for n in fo.lr_scheduler.__all__ if n != "LRScheduler"])
def test_every_scheduler_resumes(name, tmp_path):
    make = SCHEDULERS.get(name)
    if make is None:
        pytest.fail(f"fusedoptim.lr_scheduler exports {name!r}, which has no entry in "
                    f"SCHEDULERS in tests/test_checkpoint.py: add how to build it")
    path = tmp_path / "s.safetensors"

    def build():
        params = {"w": np.linspace(-1, 1, 7).astype(np.float32)}
        opt = fo.SGD(params, lr=0.1, momentum=0.9)
        return params, opt, make(opt)

    params, opt, sched = build()
    lrs = []
    for k in range(8):
        if k == 3:
            fo.save(path, opt, scheduler=sched, params=params)
        opt.step([np.full(7, 0.5 - k, np.float32)])
        _sched_step(sched, k)
        lrs.append(opt.param_groups[0]["lr"])
    params2, opt2, sched2 = build()
    fo.load(path, opt2, scheduler=sched2, params=params2)
    for k in range(3, 8):
        opt2.step([np.full(7, 0.5 - k, np.float32)])
        _sched_step(sched2, k)
        assert opt2.param_groups[0]["lr"] == lrs[k], (name, k)
    _same(params2, params, "params")
