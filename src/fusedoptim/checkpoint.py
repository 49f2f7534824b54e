"""Checkpoint files: ``fo.save`` / ``fo.load`` of an optimizer, a scheduler, the params and a
small ``extra``, in one safetensors file that cannot run code when it is read.

The file (docs/checkpoints.md):

* **safetensors** (the ``safetensors`` package's NumPy API): a JSON header, then raw tensor
  bytes. Every array of the state_dicts (and the params) is a tensor; everything else
  (hyperparameters, step counts, scalar state, the scheduler's counters, ``extra``) is JSON
  in the header's metadata. Nothing is ever pickled or unpickled: loading parses JSON and
  copies bytes, so a crafted file cannot run code. A file that is not safetensors (a pickle,
  say) is refused when its header is parsed.
* **Versioned and checked**: metadata ``format`` = ``"fusedoptim.checkpoint"`` and
  ``format_version`` (this module writes and reads version 1; a newer one is refused with a
  request to upgrade); every tensor's **XXH3-64** digest (``xxhash.xxh3_64``, seed 0, over its
  little-endian bytes in C order) and the digest of the JSON content itself are stored and
  verified on load. A truncated file, flipped bytes, a wrong class, mismatched shapes, dtypes
  or param count: each is refused with an error naming what differs, and the optimizer,
  scheduler and params stay bitwise unchanged (every check runs before anything is written).
* **Atomic**: written to a temporary file in the target's directory, ``fsync``-ed, renamed
  over the target, then the directory is ``fsync``-ed: a crash at any point leaves the old
  file or the new one, never a torn one. (A crash may leave the temporary file,
  ``.<name>.<pid>.<random>.tmp``, behind; it is never read.)

bfloat16 (and other ml_dtypes) arrays are stored as unsigned integers of their width, their
real dtype kept in the JSON; int8/int4 state is stored as the codes, absmax and map the
optimizer's ``state_dict`` holds, so it round-trips bitwise.
"""

from __future__ import annotations

import collections
import json
import os
import secrets
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .lr_scheduler import _state_mismatch

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = ["save", "load", "describe", "read_header", "CheckpointError", "FORMAT",
           "FORMAT_VERSION", "CHECKSUM"]

#: metadata["format"] of every fusedoptim checkpoint
FORMAT = "fusedoptim.checkpoint"
#: the version this module writes; it reads this one and older ones
FORMAT_VERSION = 1
#: the checksum of every tensor and of the JSON content
CHECKSUM = "xxh3_64"

# dtypes safetensors' NumPy API stores as themselves; any other (bfloat16, ...) is stored as
# the unsigned integer of its width
_NATIVE = {np.dtype(t) for t in (np.float64, np.float32, np.float16, np.int64, np.uint64,
                                 np.int32, np.uint32, np.int16, np.uint16, np.int8, np.uint8,
                                 np.bool_)}
_UINT: dict[int, np.dtype[Any]] = {1: np.dtype(np.uint8), 2: np.dtype(np.uint16),
                                   4: np.dtype(np.uint32), 8: np.dtype(np.uint64)}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or does not fit what it is loaded into. Nothing
    was modified when it is raised."""


# -- JSON encoding of everything that is not a tensor --------------------------------------------
# Plain JSON where JSON says it exactly (str-keyed dicts, lists, str, bool, None, int, finite
# float: Python writes a float's shortest round-tripping repr); a one-key object whose key
# starts with "$" otherwise.

def _hash(data: Any) -> str:
    """XXH3-64 (seed 0) of a bytes object or a C-contiguous array's bytes, as 16 hex digits."""
    import xxhash
    digest: str = xxhash.xxh3_64_hexdigest(data)
    return digest


def _dtype_name(dt: np.dtype[Any]) -> str:
    return str(dt.name)


def _dtype_of(name: str) -> np.dtype[Any]:
    out: np.dtype[Any]
    if name == "bfloat16":
        import ml_dtypes
        out = np.dtype(ml_dtypes.bfloat16)
    else:
        out = np.dtype(name)
    return out


class _Encoder:
    def __init__(self) -> None:
        self.tensors: dict[str, NDArray[Any]] = {}
        self.checksums: dict[str, str] = {}

    def tensor(self, a: NDArray[Any], where: str) -> dict[str, Any]:
        if a.dtype.hasobject or a.dtype.fields is not None:
            raise TypeError(f"{where} is an array of dtype {a.dtype}; a checkpoint holds "
                            f"numeric arrays only")
        name = where
        k = 1
        while name in self.tensors:
            k += 1
            name = f"{where}#{k}"
        stored = np.ascontiguousarray(a)
        if stored.dtype.byteorder == ">":
            stored = stored.astype(stored.dtype.newbyteorder("<"))
        if stored.dtype not in _NATIVE:
            stored = stored.view(_UINT[stored.dtype.itemsize])
        if stored.ndim == 0:        # stored as shape (1,), its 0-d shape kept in the JSON
            stored = stored.reshape(1)
        self.tensors[name] = stored
        self.checksums[name] = _hash(stored)
        return {"$tensor": name, "dtype": _dtype_name(a.dtype), "shape": list(a.shape)}

    def encode(self, obj: Any, where: str) -> Any:
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, np.ndarray):
            return self.tensor(obj, where)
        if isinstance(obj, np.generic):
            if isinstance(obj, (np.floating, np.integer, np.bool_)):
                return {"$scalar": _dtype_name(obj.dtype),
                        "value": self.encode(obj.item(), where)}
            raise TypeError(f"{where} is a {type(obj).__name__}, which a checkpoint cannot hold")
        if isinstance(obj, int):
            return int(obj)
        if isinstance(obj, float):
            if obj != obj:
                # a NaN's sign and payload too (a diverged run's scalar state resumes bitwise)
                return {"$float": "nan", "bits": struct.pack("<d", obj).hex()}
            if obj in (float("inf"), float("-inf")):
                return {"$float": repr(float(obj))}
            return float(obj)
        if isinstance(obj, tuple):
            return {"$tuple": [self.encode(v, f"{where}/{i}") for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [self.encode(v, f"{where}/{i}") for i, v in enumerate(obj)]
        if isinstance(obj, Mapping):
            tag = "$counter" if isinstance(obj, collections.Counter) else "$map"
            if tag == "$map" and type(obj) is dict and all(
                    isinstance(k, str) and not k.startswith("$") for k in obj):
                return {k: self.encode(v, f"{where}/{k}") for k, v in obj.items()}
            return {tag: [[self.encode(k, f"{where}/key"), self.encode(v, f"{where}/{k}")]
                          for k, v in obj.items()]}
        raise TypeError(f"{where} is a {type(obj).__name__} ({obj!r:.60}), which a checkpoint "
                        f"cannot hold: only arrays, numbers, strings, bools, None, lists, "
                        f"tuples and dicts of them (nothing is pickled)")


def _decode(obj: Any, tensors: Mapping[str, NDArray[Any]] | None) -> Any:
    """The Python value of encoded JSON; tensors from `tensors` (None: a description
    ``<array dtype shape>`` string instead, for inspect)."""
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) >= 1:
        key = next(iter(obj))
        if key.startswith("$"):
            body = obj[key]
            if key == "$tensor":
                if tensors is None:
                    return _TensorInfo(body, obj["dtype"], tuple(obj["shape"]))
                return tensors[body]
            if key == "$tuple":
                return tuple(_decode(v, tensors) for v in body)
            if key == "$float":
                bits = obj.get("bits")
                if bits is None:
                    return float(body)
                try:
                    value: float = struct.unpack("<d", bytes.fromhex(bits))[0]
                except (TypeError, ValueError, struct.error):
                    raise CheckpointError(f"a NaN's bits in the checkpoint are {bits!r}, not "
                                          f"16 hex digits") from None
                return value
            if key == "$scalar":
                return _dtype_of(body).type(_decode(obj["value"], tensors))
            if key in ("$map", "$counter"):
                pairs = [(_decode(k, tensors), _decode(v, tensors)) for k, v in body]
                return collections.Counter(dict(pairs)) if key == "$counter" else dict(pairs)
            raise CheckpointError(f"unknown JSON tag {key!r} in the checkpoint")
    return {k: _decode(v, tensors) for k, v in obj.items()}


class _TensorInfo:
    """A tensor seen in the header only (``fusedoptim inspect``)."""

    def __init__(self, name: str, dtype: str, shape: tuple[int, ...]) -> None:
        self.name, self.dtype, self.shape = name, dtype, shape

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def __repr__(self) -> str:
        return f"<{self.dtype} array {self.shape}>"


# -- what is saved -------------------------------------------------------------------------------

def _optimizer_params(optimizer: Any) -> list[Any]:
    groups = getattr(optimizer, "param_groups", None)
    if not isinstance(groups, list) or not callable(getattr(optimizer, "state_dict", None)) \
            or not callable(getattr(optimizer, "load_state_dict", None)):
        raise TypeError(f"optimizer must be a fusedoptim optimizer (with param_groups, "
                        f"state_dict and load_state_dict), got {type(optimizer).__name__}")
    return [p for g in groups for p in g["params"]]


def _param_records(arrays: Sequence[Any]) -> list[dict[str, Any]]:
    return [{"shape": list(np.shape(a)), "dtype": _dtype_name(np.asarray(a).dtype)}
            for a in arrays]


def _params_payload(params: Any, enc: _Encoder) -> dict[str, Any]:
    from .flat import FlatParams
    if isinstance(params, FlatParams):
        return {"kind": "FlatParams",
                "names": None if params.names is None else list(params.names),
                "shapes": [list(s) for s in params.shapes],
                "dtype": _dtype_name(params.dtype),
                "flat": enc.tensor(params.flat, "params/flat")}
    if isinstance(params, Mapping):
        for k, a in params.items():
            if not isinstance(k, str) or not isinstance(a, np.ndarray):
                raise TypeError(f"params must be a FlatParams or a dict name -> ndarray; "
                                f"params[{k!r}] is a {type(a).__name__}")
        return {"kind": "dict",
                "arrays": {k: enc.tensor(a, f"params/{k}") for k, a in params.items()}}
    raise TypeError(f"params must be a FlatParams or a dict name -> ndarray, got "
                    f"{type(params).__name__}")


def save(path: str | os.PathLike[str], optimizer: Any, *, scheduler: Any = None,
         params: Any = None, extra: Any = None) -> None:
    """Write `optimizer`'s state (and optionally a `scheduler`'s state, the `params` (a
    :class:`~fusedoptim.FlatParams` or a dict name -> array) and a small JSON-able `extra`)
    to `path`, atomically, as a safetensors file (see the module doc).

    Arrays anywhere (state, params, arrays inside `extra`) are stored as tensors; everything
    else as JSON. Values that are neither (a function, an object) are refused with a
    TypeError naming where they are, before anything is written."""
    path = os.fspath(path)
    if not isinstance(path, str):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    params_list = _optimizer_params(optimizer)
    enc = _Encoder()
    content: dict[str, Any] = {
        "optimizer": {
            "class": type(optimizer).__name__,
            "params": _param_records(params_list),
            "groups": [len(g["params"]) for g in optimizer.param_groups],
            "state_dict": enc.encode(optimizer.state_dict(), "optimizer"),
        },
        "scheduler": None,
        "params": None,
        "extra": enc.encode(extra, "extra"),
    }
    if scheduler is not None:
        if not callable(getattr(scheduler, "state_dict", None)):
            raise TypeError(f"scheduler must have state_dict(), got {type(scheduler).__name__}")
        content["scheduler"] = {"class": type(scheduler).__name__,
                                "state_dict": enc.encode(scheduler.state_dict(), "scheduler")}
    if params is not None:
        content["params"] = _params_payload(params, enc)
    content["checksums"] = enc.checksums
    text = json.dumps(content, allow_nan=False, separators=(",", ":"))
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION),
                "checksum": CHECKSUM, "content": text,
                "content_checksum": _hash(text.encode())}
    _atomic_write(path, enc.tensors, metadata)


def _atomic_write(path: str, tensors: dict[str, NDArray[Any]],
                  metadata: dict[str, str]) -> None:
    from safetensors.numpy import save_file
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot save to {path!r}: directory {directory!r} does not "
                                f"exist")
    tmp = os.path.join(directory, f".{base}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # O_EXCL: never follow or reuse someone else's file; mode 0o666 & ~umask, as open() gives
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if hasattr(os, "O_DIRECTORY"):      # POSIX: make the rename itself durable
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


# -- reading -------------------------------------------------------------------------------------

def _open_error(path: str, exc: BaseException) -> CheckpointError:
    if isinstance(exc, OSError) and exc.strerror:
        return CheckpointError(f"{path}: cannot read it: {exc.strerror}")
    return CheckpointError(f"{path}: not a readable checkpoint file: it is truncated, "
                           f"corrupted, or not a safetensors file (a pickle, say, which is "
                           f"never loaded) ({type(exc).__name__}: {exc})")


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checked JSON content of a checkpoint (format, version and content checksum
    verified), without reading any tensor. Tensors appear as their ``$tensor`` records."""
    path = os.fspath(path)
    _check_path(path)
    from safetensors import safe_open
    try:
        with safe_open(path, framework="np") as f:
            metadata = f.metadata() or {}
            keys = set(f.keys())
    except Exception as exc:      # safetensors raises its own error types (and OSError)
        raise _open_error(path, exc) from None
    return _checked_content(path, metadata, keys)


def _check_path(path: str) -> None:
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such file")
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")


def _checked_content(path: str, metadata: Mapping[str, str], keys: set[str]) -> dict[str, Any]:
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: a safetensors file, but not a fusedoptim checkpoint "
                              f"(metadata format is {metadata.get('format')!r}, expected "
                              f"{FORMAT!r})")
    raw = metadata.get("format_version", "")
    if not raw.isdigit():
        raise CheckpointError(f"{path}: format_version {raw!r} is not a number (corrupted "
                              f"header)")
    if int(raw) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written in checkpoint format version {int(raw)}, by a "
                              f"newer fusedoptim; this one reads up to version "
                              f"{FORMAT_VERSION}: upgrade fusedoptim to load it")
    if metadata.get("checksum") != CHECKSUM:
        raise CheckpointError(f"{path}: checksum kind {metadata.get('checksum')!r} is not "
                              f"{CHECKSUM!r} (corrupted header)")
    text = metadata.get("content", "")
    if _hash(text.encode()) != metadata.get("content_checksum"):
        raise CheckpointError(f"{path}: the JSON content fails its {CHECKSUM} checksum: the "
                              f"file is corrupted")
    try:
        content: dict[str, Any] = json.loads(text)
    except ValueError as exc:
        raise CheckpointError(f"{path}: the JSON content does not parse ({exc})") from None
    if not isinstance(content, dict) or not isinstance(content.get("optimizer"), dict):
        raise CheckpointError(f"{path}: the JSON content has no optimizer section")
    content["format_version"] = int(raw)
    expected = set(content.get("checksums", {}))
    if expected != keys:
        missing, unexpected = sorted(expected - keys), sorted(keys - expected)
        raise CheckpointError(f"{path}: the tensors do not match the content (missing "
                              f"{missing[:5]}, unexpected {unexpected[:5]}): the file is "
                              f"corrupted")
    return content


def _read(path: str) -> tuple[dict[str, Any], dict[str, NDArray[Any]]]:
    """The content and every tensor, each verified against its checksum, its recorded dtype
    and shape."""
    _check_path(path)
    from safetensors import safe_open
    tensors: dict[str, NDArray[Any]] = {}
    try:
        with safe_open(path, framework="np") as f:
            metadata = f.metadata() or {}
            keys = set(f.keys())
            content = _checked_content(path, metadata, keys)
            for name in sorted(keys):
                tensors[name] = np.array(f.get_tensor(name), copy=True)
    except CheckpointError:
        raise
    except Exception as exc:
        raise _open_error(path, exc) from None
    records: dict[str, dict[str, Any]] = {}
    _collect(content, records)
    for name, a in tensors.items():
        digest = _hash(np.ascontiguousarray(a))
        if digest != content["checksums"][name]:
            raise CheckpointError(f"{path}: tensor {name!r} fails its {CHECKSUM} checksum: the "
                                  f"file is corrupted")
        rec = records.get(name)
        if rec is None:
            raise CheckpointError(f"{path}: tensor {name!r} is not referenced by the content")
        dt = _dtype_of(rec["dtype"])
        if a.dtype != dt:
            if a.dtype.itemsize != dt.itemsize or a.dtype not in _UINT.values():
                raise CheckpointError(f"{path}: tensor {name!r} is stored as {a.dtype}, the "
                                      f"content says {dt}: the file is corrupted")
            a = a.view(dt)
        if rec["shape"] == [] and a.shape == (1,):
            a = a.reshape(())
        if list(a.shape) != list(rec["shape"]):
            raise CheckpointError(f"{path}: tensor {name!r} has shape {a.shape}, the content "
                                  f"says {tuple(rec['shape'])}: the file is corrupted")
        tensors[name] = a
    return content, tensors


def _collect(obj: Any, out: dict[str, dict[str, Any]]) -> None:
    if isinstance(obj, list):
        for v in obj:
            _collect(v, out)
    elif isinstance(obj, dict):
        if "$tensor" in obj:
            out[obj["$tensor"]] = obj
        else:
            for k, v in obj.items():
                if k != "checksums":
                    _collect(v, out)


def _what(names: Sequence[Any], i: int) -> str:
    name = names[i] if i < len(names) else None
    return f"param {i}" + (f" ({name!r})" if name is not None else "")


def _check_params_fit(path: str, saved: list[dict[str, Any]], arrays: list[Any],
                      opt_name: str, names: Sequence[Any]) -> None:
    if len(saved) != len(arrays):
        raise CheckpointError(f"{path}: the checkpoint holds state for {len(saved)} params, "
                              f"this {opt_name} has {len(arrays)}")
    for i, (rec, a) in enumerate(zip(saved, arrays)):
        shape, dtype = tuple(np.shape(a)), _dtype_name(np.asarray(a).dtype)
        if tuple(rec["shape"]) != shape:
            raise CheckpointError(f"{path}: {_what(names, i)} has shape {tuple(rec['shape'])} "
                                  f"in the checkpoint, {shape} in this {opt_name}")
        if rec["dtype"] != dtype:
            raise CheckpointError(f"{path}: {_what(names, i)} has dtype {rec['dtype']} in the "
                                  f"checkpoint, {dtype} in this {opt_name}")


def _params_plan(path: str, content: dict[str, Any], params: Any,
                 tensors: Mapping[str, NDArray[Any]]) -> list[tuple[NDArray[Any], NDArray[Any]]]:
    """(destination, source) pairs for the params, every one checked."""
    from .flat import FlatParams
    saved = content.get("params")
    if saved is None:
        raise CheckpointError(f"{path}: params were given, but the checkpoint holds no params "
                              f"(save them with fo.save(..., params=...))")
    if isinstance(params, FlatParams):
        if saved["kind"] != "FlatParams":
            raise CheckpointError(f"{path}: the checkpoint holds params as a {saved['kind']}, "
                                  f"not a FlatParams")
        names = None if params.names is None else list(params.names)
        shapes = [list(s) for s in params.shapes]
        if saved["names"] != names or saved["shapes"] != shapes:
            raise CheckpointError(f"{path}: the checkpoint's FlatParams has names "
                                  f"{saved['names']} and shapes {saved['shapes']}; this one "
                                  f"{names} and {shapes}")
        if saved["dtype"] != _dtype_name(params.dtype):
            raise CheckpointError(f"{path}: the checkpoint's FlatParams has dtype "
                                  f"{saved['dtype']}, this one {params.dtype}")
        return [(params.flat, tensors[saved["flat"]["$tensor"]])]
    if isinstance(params, Mapping):
        if saved["kind"] != "dict":
            raise CheckpointError(f"{path}: the checkpoint holds params as a {saved['kind']}, "
                                  f"not a dict")
        arrays = saved["arrays"]
        if list(arrays) != list(params):
            raise CheckpointError(f"{path}: the checkpoint's params are named "
                                  f"{list(arrays)}, these {list(params)}")
        pairs = []
        for k, dst in params.items():
            rec = arrays[k]
            if not isinstance(dst, np.ndarray) or not dst.flags.writeable:
                raise CheckpointError(f"params[{k!r}] must be a writeable ndarray to load into")
            if tuple(rec["shape"]) != dst.shape or rec["dtype"] != _dtype_name(dst.dtype):
                raise CheckpointError(f"{path}: params[{k!r}] is {rec['dtype']} "
                                      f"{tuple(rec['shape'])} in the checkpoint, "
                                      f"{dst.dtype} {dst.shape} here")
            pairs.append((dst, tensors[rec["$tensor"]]))
        return pairs
    raise TypeError(f"params must be a FlatParams or a dict name -> ndarray, got "
                    f"{type(params).__name__}")


def load(path: str | os.PathLike[str], optimizer: Any, *, scheduler: Any = None,
         params: Any = None) -> Any:
    """Load a checkpoint written by :func:`save` into `optimizer` (and `scheduler` and
    `params` when given); return its ``extra``.

    Everything is verified first: the format and its version, every checksum, the optimizer's
    class, its params' count, shapes and dtypes, the optimizer state itself (as
    ``load_state_dict`` checks it), the scheduler's class and state layout, the params' names,
    shapes and dtypes. Any mismatch raises :class:`CheckpointError` (a ValueError) naming what
    differs, and nothing has been modified. The file never runs code (see the module doc)."""
    path = os.fspath(path)
    if not isinstance(path, str):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    arrays = _optimizer_params(optimizer)
    content, tensors = _read(path)
    opt_name = type(optimizer).__name__
    saved_opt = content["optimizer"]
    if saved_opt["class"] != opt_name:
        raise CheckpointError(f"{path}: the checkpoint holds a {saved_opt['class']}'s state; "
                              f"this optimizer is a {opt_name}")
    names = getattr(optimizer, "_names", [])
    _check_params_fit(path, saved_opt["params"], arrays, opt_name, names)
    groups = [len(g["params"]) for g in optimizer.param_groups]
    if saved_opt["groups"] != groups:
        raise CheckpointError(f"{path}: the checkpoint has param groups of sizes "
                              f"{saved_opt['groups']}, this {opt_name} {groups}")
    state_dict = _decode(saved_opt["state_dict"], tensors)
    sched_state = None
    if scheduler is not None:
        saved_sched = content.get("scheduler")
        if saved_sched is None:
            raise CheckpointError(f"{path}: a scheduler was given, but the checkpoint holds "
                                  f"none (save it with fo.save(..., scheduler=...))")
        if saved_sched["class"] != type(scheduler).__name__:
            raise CheckpointError(f"{path}: the checkpoint holds a {saved_sched['class']}'s "
                                  f"state; this scheduler is a {type(scheduler).__name__}")
        sched_state = _decode(saved_sched["state_dict"], tensors)
        err = _state_mismatch(sched_state, scheduler.state_dict(), "state_dict")
        if err:
            raise CheckpointError(f"{path}: the checkpoint's {saved_sched['class']} does not "
                                  f"fit this one: {err}")
    copies = _params_plan(path, content, params, tensors) if params is not None else []
    extra = _decode(content.get("extra"), tensors)
    # Everything that can be checked without writing is checked. load_state_dict checks the
    # state itself before it writes, and leaves the optimizer untouched when it refuses.
    try:
        optimizer.load_state_dict(state_dict)
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{path}: the checkpoint's state does not fit this {opt_name}: "
                              f"{exc}") from exc
    if scheduler is not None:
        scheduler.load_state_dict(sched_state)
    for dst, src in copies:
        np.copyto(dst, src, casting="no")
    return extra


# -- inspect -------------------------------------------------------------------------------------

def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return repr(v)
    return repr(v)


def describe(path: str | os.PathLike[str], out: Callable[[str], None] = print) -> None:
    """Print what a checkpoint holds (the class, its groups and hyperparameters, each param's
    state buffers and step count, the scheduler, params and extra) from its header alone:
    no tensor is read, nothing is loaded into anything."""
    path = os.fspath(path)
    content = read_header(path)
    opt = content["optimizer"]
    sd = _decode(opt["state_dict"], None)
    records = opt["params"]
    nbytes = sum(int(np.prod(r["shape"], dtype=np.int64)) * _dtype_of(r["dtype"]).itemsize
                 for r in records)
    out(f"{path}: fusedoptim checkpoint, format version {content['format_version']}, "
        f"{CHECKSUM}-checked")
    out(f"optimizer: {opt['class']}, {len(records)} params in {len(opt['groups'])} group(s), "
        f"{nbytes:,} bytes of params")
    groups = sd.get("param_groups", []) if isinstance(sd, dict) else []
    for gi, g in enumerate(groups):
        hp = ", ".join(f"{k}={_fmt(v)}" for k, v in g.items()
                       if k not in ("params", "param_names"))
        out(f"  group {gi}: params {_ranges(g.get('params', []))}: {hp}")
    names: dict[int, str] = {}
    for g in groups:
        if isinstance(g, dict) and "param_names" in g:
            names.update(zip(g.get("params", []), g["param_names"]))
    state = sd.get("state", {}) if isinstance(sd, dict) else {}
    steps = sorted({_plain(st.get("step")) for st in state.values()
                    if isinstance(st, dict) and "step" in st}, key=str)
    out(f"state: {len(state)} of {len(records)} params have state"
        + (f"; step counts {', '.join(map(str, steps))}" if steps else ""))
    total = 0
    for i, st in state.items():
        if not isinstance(st, dict):
            continue
        bufs = []
        for k, v in st.items():
            if isinstance(v, _TensorInfo):
                size = v.size * _dtype_of(v.dtype).itemsize
                total += size
                bufs.append(f"{k} {v.dtype}{list(v.shape)}")
            elif isinstance(v, list) and v and all(isinstance(x, _TensorInfo) for x in v):
                bufs.append(f"{k} {len(v)} arrays")
                total += sum(x.size * _dtype_of(x.dtype).itemsize for x in v)
            else:
                bufs.append(f"{k}={_fmt(_plain(v))}")
        shape = tuple(records[i]["shape"]) if isinstance(i, int) and i < len(records) else "?"
        label = f"{i} ({names[i]!r})" if names.get(i) is not None else str(i)
        out(f"  param {label} {shape}: {', '.join(bufs)}")
    out(f"state bytes: {total:,}")
    sched = content.get("scheduler")
    if sched is not None:
        ssd = _decode(sched["state_dict"], None)
        keys = ("last_epoch", "_step_count", "_last_lr", "base_lrs")
        shown = ", ".join(f"{k}={_fmt(ssd[k])}" for k in keys if k in ssd)
        out(f"scheduler: {sched['class']}" + (f": {shown}" if shown else ""))
    else:
        out("scheduler: none")
    prm = content.get("params")
    if prm is None:
        out("params: none")
    elif prm["kind"] == "FlatParams":
        out(f"params: FlatParams {prm['dtype']}, {len(prm['shapes'])} arrays, "
            f"{prm['flat']['shape'][0]:,} elements")
    else:
        out(f"params: dict of {len(prm['arrays'])} arrays")
    extra = _decode(content.get("extra"), None)
    out(f"extra: {extra!r:.200}")


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _ranges(idx: Sequence[int]) -> str:
    idx = list(idx)
    if idx and idx == list(range(idx[0], idx[0] + len(idx))):
        return f"{idx[0]}..{idx[-1]}" if len(idx) > 1 else str(idx[0])
    return str(idx)
