"""The torch.optim.Optimizer subclass that steps torch CPU tensors through fusedoptim's
fused kernels.

Each ``fusedoptim.torch.X`` holds a ``fusedoptim.X`` (the *inner* optimizer) built over
zero-copy NumPy views of the model's params. torch keeps what torch code touches: the param
groups (schedulers write ``group["lr"]``), the hooks, ``zero_grad``. The inner optimizer keeps
the state and runs the step. Three things are kept in sync, each as cheaply as it can be:

* hyperparameters: copied from torch's groups to the inner groups at each step (a few dict
  writes per group; the inner optimizer re-validates only values that changed);
* grads: ``p.grad`` is read at each step; the NumPy views of grad tensors seen at the last
  step are reused (one C-level identity check per group), so ``zero_grad(set_to_none=False)``
  loops pay nothing and ``set_to_none=True`` loops pay one view per new grad;
* state: ``opt.state`` (torch's format: ``param -> {name: tensor}``) is rebuilt from the inner
  state when it is read after a step. Buffers are tensors sharing memory with the kernels'
  buffers; ``step`` and scalar state are 0-d tensors, as torch keeps them.

``state_dict()`` is torch's own, over that state. ``load_state_dict`` converts a torch-format
checkpoint (torch.optim's, or ours) into the inner optimizer's, which checks everything before
it changes anything.
"""

from __future__ import annotations

import functools
import itertools
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from .. import _kernels
from .._precision import FLOAT32, MASTER, GroupPrecision
from ..optimizer import Optimizer as _FusedOptimizer
from ._tensors import NUMPY_DTYPES, as_array, as_tensor, device_error, param_array, scalar_dtype

#: the NumPy dtypes of float tensors (ml_dtypes' bfloat16 is not of kind "f")
_FLOAT_ARRAYS = frozenset(NUMPY_DTYPES.values())
_STRIDED = torch.strided
_TORCH_DTYPES = {d: t for t, d in NUMPY_DTYPES.items()}
#: id(param) -> the live drop-in optimizer stepping it, whose grad views clip_grad_norm_ and
#: clip_grad_value_ reuse (the optimizer keeps its params alive, so an id stays valid while
#: its entry exists)
_VIEW_OWNERS: weakref.WeakValueDictionary[int, Optimizer] = weakref.WeakValueDictionary()


def shared_grad_plans(params: list[Any]) -> tuple[list[Any], Any] | None:
    """The driver plans over the grads of `params` (those present) and the first grad's
    dtype, from the drop-in optimizer built over exactly these params in this order: its grad
    views (checked and cached as its step does, which its next step then reuses) and plans
    kept while the grads stay the same tensors. None when there is no such optimizer."""
    if not params:
        return None
    opt = _VIEW_OWNERS.get(id(params[0]))
    if opt is None or opt._sparse_grads or not _kernels.same_items(params, opt._flat_tuple):
        return None
    arrays = opt._grads(stepping=False)
    if arrays is not opt._clip_key:
        from ..grad_utils import _plans
        present = [a for a in arrays if a is not None]
        items, n64 = _kernels.check_arrays(present, "grads", None, True)
        opt._clip_plans = _plans(items, n64)
        opt._clip_dtype = next((torch_dtype(a) for a in present), None)
        opt._clip_key = arrays
    return opt._clip_plans, opt._clip_dtype
#: torch dtype -> NumPy dtype number, for the grads' views
_TYPENUMS = {t: d.num for t, d in NUMPY_DTYPES.items()}
#: optimizers whose torch.optim twin keeps no ``step`` in its state
_NO_STEP_IN_TORCH = frozenset({"SGD"})
#: the scalar state torch keeps as 0-d tensors, by optimizer; spec-built optimizers: their
#: ``step`` and declared scalar state (NAdam's mu_product, ASGD's eta and mu)
_SPEC_TENSOR_SCALARS: frozenset[str] = frozenset()
_TENSOR_SCALARS = {"Adafactor": frozenset({"step"}), "SparseAdam": frozenset(),
                   "LBFGS": frozenset()}
#: scalar state that is a count (loaded as int)
_INTEGER_STATE = frozenset({"step", "func_evals", "n_iter"})


def _label(gi: int, i: int, name: str | None) -> str:
    return f"param_groups[{gi}]['params'][{i}]" + (f" ({name!r})" if name else "")


def _split_named(items: list[Any]) -> tuple[list[Any], list[str | None]]:
    """Params and their names from a list of tensors or of (name, tensor) pairs (torch's
    ``named_parameters()``)."""
    params: list[Any] = []
    names: list[str | None] = []
    for it in items:
        if isinstance(it, tuple) and len(it) == 2 and isinstance(it[0], str):
            names.append(it[0])
            params.append(it[1])
        else:
            names.append(None)
            params.append(it)
    return params, names


def _float_state_dtype(prec: GroupPrecision, slot: str, size: int) -> np.dtype[Any]:
    """The dtype in which the fused optimizer loads float state of `slot` for a param of
    `size` elements: float32 where the state is quantized (it quantizes it) or under master
    weights, else the group's state dtype."""
    if slot == MASTER or prec.quant is not None:
        return FLOAT32
    return prec.slot_dtype(slot)


def _to_torch(v: Any) -> Any:
    """Arrays (also inside lists) as tensors sharing their memory; a NumPy scalar as a 0-d
    tensor; anything else as it is."""
    if isinstance(v, np.ndarray):
        return as_tensor(v)
    if isinstance(v, np.generic):
        return torch.tensor(v.item(), dtype=torch.float64 if v.dtype == np.float64
                            else torch.float32)
    if isinstance(v, list):
        return [_to_torch(x) for x in v]
    return v


def _to_numpy(v: Any, what: str) -> Any:
    """Tensors (also inside lists) as NumPy arrays (copies, on the CPU, dense)."""
    if isinstance(v, torch.Tensor):
        if v.layout is not torch.strided:
            v = v.to_dense()
        v = v.detach().cpu().contiguous()
        if v.is_floating_point() and v.dtype not in NUMPY_DTYPES:
            raise TypeError(f"{what} has dtype {v.dtype}, which no fusedoptim state uses")
        return as_array(v).copy()
    if isinstance(v, list):
        return [_to_numpy(x, f"{what}[{j}]") for j, x in enumerate(v)]
    return v


def torch_dtype(a: np.ndarray[Any, Any]) -> torch.dtype:
    """The torch dtype of a view's NumPy dtype."""
    return _TORCH_DTYPES[a.dtype]


def _plain(v: Any) -> Any:
    """A hyperparameter as the inner optimizer takes it: a 0-d tensor becomes a number."""
    if isinstance(v, torch.Tensor):
        return v.item()
    return v


def _with_hooks(func: Callable[..., Any]) -> Callable[..., Any]:
    """torch's step wrapper (``Optimizer.profile_hook_step``: the global and per-optimizer
    step pre/post hooks, in torch's order and with its argument rewriting), entering the
    profiler's record_function only while a profiler runs: torch enters it on every step,
    which costs more than a small model's whole fused step."""
    from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks

    @functools.wraps(func)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if torch._C._autograd._profiler_enabled():
            with torch.autograd.profiler.record_function(
                    f"Optimizer.step#{type(self).__name__}.step"):
                return _hooked(self, args, kwargs)
        return _hooked(self, args, kwargs)

    def _hooked(self: Any, args: Any, kwargs: Any) -> Any:
        full = (self, *args)
        for pre_hook in itertools.chain(_global_optimizer_pre_hooks.values(),
                                        self._optimizer_step_pre_hooks.values()):
            result = pre_hook(self, full, kwargs)
            if result is not None:
                if isinstance(result, tuple) and len(result) == 2:
                    full, kwargs = result
                else:
                    raise RuntimeError(f"{func} must return None or a tuple of (new_args, "
                                       f"new_kwargs), but got {result}.")
        out = func(*full, **kwargs)
        for post_hook in itertools.chain(self._optimizer_step_post_hooks.values(),
                                         _global_optimizer_post_hooks.values()):
            post_hook(self, full, kwargs)
        return out

    wrapper.hooked = True          # type: ignore[attr-defined]  # torch then wraps no more
    return wrapper


class Optimizer(torch.optim.Optimizer):
    """Base class of the torch.optim drop-ins. Each subclass names its fusedoptim optimizer
    (``_fused_class``); construction takes that optimizer's arguments, with torch params.

    Params are CPU, dense, contiguous tensors of float32, float64, bfloat16 or float16, given as
    torch accepts them (``model.parameters()``, ``named_parameters()``, or param groups). Frozen
    params (``requires_grad=False``) and params without a grad are skipped, as in torch.
    ``step(closure=None)`` reads ``p.grad``. With ``torch.amp.GradScaler`` the grads are
    unscaled inside the fused kernel (torch's protocol for fused optimizers:
    ``_step_supports_amp_scaling``, ``grad_scale``, ``found_inf``), and a step with non-finite
    grads is skipped without changing anything.
    """

    _fused_class: ClassVar[type[Any]]
    param_groups: list[dict[str, Any]]
    #: grads are torch sparse tensors (SparseAdam): every grad goes through _grad_array
    _sparse_grads: ClassVar[bool] = False
    # GradScaler hands us grad_scale and found_inf instead of unscaling the grads itself.
    _step_supports_amp_scaling = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "step" in cls.__dict__:
            cls.step = _with_hooks(cls.__dict__["step"])  # type: ignore[method-assign]

    def __init__(self, params: Iterable[Any], *args: Any, **kwargs: Any) -> None:
        if getattr(type(self), "_fused_class", None) is None:
            raise TypeError(f"{type(self).__name__} is a base class: use one of "
                            f"fusedoptim.torch's optimizers, e.g. fusedoptim.torch.AdamW")
        if isinstance(params, torch.Tensor):
            raise TypeError("params argument given to the optimizer should be an iterable of "
                            f"Tensors or dicts, but got {torch.typename(params)}")
        items = list(params)
        if not items:
            raise ValueError("optimizer got an empty parameter list")
        groups = items if isinstance(items[0], dict) else [{"params": items}]
        numpy_groups = []
        for gi, g in enumerate(groups):
            if not isinstance(g, dict) or "params" not in g:
                raise TypeError(f"param group {gi} must be a dict with a 'params' entry, got "
                                f"{type(g).__name__}")
            numpy_groups.append(self._numpy_group(g, gi))
        self._fused: Any = self._fused_class(numpy_groups, *args, **kwargs)
        self._ready = False
        self._state_dirty = True
        self._torch_state: defaultdict[torch.Tensor, dict[str, Any]] = defaultdict(dict)
        super().__init__(items, dict(getattr(self._fused, "defaults", {})))
        # The fused side resolved every group's hyperparameters (defaults, per-group kinds
        # such as MuonWithAuxAdam's): torch's groups show the same values.
        for tg, fg in zip(self.param_groups, self._fused.param_groups):
            for k, v in fg.items():
                if k != "params":
                    tg.setdefault(k, v)
        self._flat: list[torch.Tensor] = []
        self._rebuild_caches()
        self._ready = True

    # -- params -----------------------------------------------------------------------------
    @staticmethod
    def _numpy_group(group: Mapping[str, Any], gi: int) -> dict[str, Any]:
        """A torch param group as the inner optimizer takes it: NumPy views, plain numbers."""
        raw = group["params"]
        if isinstance(raw, torch.Tensor):
            raw = [raw]
        params, names = _split_named(list(raw))
        out = {k: _plain(v) for k, v in group.items() if k not in ("params", "param_names")}
        out["params"] = [param_array(p, _label(gi, i, n))
                         for i, (p, n) in enumerate(zip(params, names))]
        return out

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group, as in torch (its unset hyperparameters take the defaults); the
        fused optimizer gets it too, or neither does."""
        if not getattr(self, "_ready", False):
            super().add_param_group(param_group)    # from torch's __init__: already inside
            return
        if not isinstance(param_group, dict) or "params" not in param_group:
            raise TypeError(f"param_group must be a dict with a 'params' entry, got "
                            f"{type(param_group).__name__}")
        numpy_group = self._numpy_group(param_group, len(self.param_groups))
        super().add_param_group(param_group)
        torch_group = self.param_groups[-1]
        numpy_group.update({k: _plain(v) for k, v in torch_group.items()
                            if k not in ("params", "param_names")})
        try:
            self._fused.add_param_group(numpy_group)
        except Exception:
            self.param_groups.pop()
            raise
        for k, v in self._fused.param_groups[-1].items():
            if k != "params":
                torch_group.setdefault(k, v)
        self._rebuild_caches()

    def _rebuild_caches(self) -> None:
        """What each step compares against: the params (and their memory) the fused optimizer
        points at, and the grad tensors last seen with their NumPy views."""
        self._group_params = [tuple(g["params"]) for g in self.param_groups]
        # per group: the hyperparameters copied to the fused side at each step
        self._hyper_keys = [tuple(k for k in fg if k != "params")
                            for fg in self._fused.param_groups]
        self._flat = [p for ps in self._group_params for p in ps]
        # the fused side's views of the params: the shapes grads are viewed in
        self._templates = [a for g in self._fused.param_groups for a in g["params"]]
        self._sizes = [a.size for a in self._templates]
        self._flat_tuple = tuple(self._flat)
        self._clip_key: Any = None        # the grad views list the clip plans were built on
        self._clip_plans: list[Any] = []
        self._clip_dtype: Any = None
        for q in self._flat:
            _VIEW_OWNERS[id(q)] = self
        self._ptrs = [p.data_ptr() for p in self._flat]
        self._grad_tensors: tuple[Any, ...] = (None,) * len(self._flat)
        self._grad_arrays: list[Any] = [None] * len(self._flat)
        self._state_dirty = True

    @property
    def fused_optimizer(self) -> Any:
        """The fusedoptim optimizer that holds the state and runs the step (NumPy views)."""
        return self._fused

    # -- the step ---------------------------------------------------------------------------
    def _grads(self, stepping: bool = True) -> list[Any]:
        """Each param's grad as a NumPy view (None: no grad), checked; views of grad tensors
        seen at the last step are reused. `stepping`: also check that the params are still
        the ones (and the memory) the fused optimizer points at (the clip, which only reads
        and scales grads, skips that)."""
        flat = self._flat
        if stepping:
            self._check_params()
        grads = [p.grad for p in flat]
        cached = self._grad_tensors
        if _kernels.same_items(grads, cached):
            return self._grad_arrays
        return self._new_grad_views(grads)

    def _check_params(self) -> None:
        flat = self._flat
        for gi, g in enumerate(self.param_groups):
            if not _kernels.same_items(g["params"], self._group_params[gi]):
                raise ValueError(f"param_groups[{gi}]['params'] changed after the optimizer "
                                 f"was built; add params with add_param_group, or build a new "
                                 f"optimizer (load_state_dict carries the state over)")
        if [p.data_ptr() for p in flat] != self._ptrs:
            i = next(k for k, p in enumerate(flat) if p.data_ptr() != self._ptrs[k])
            raise ValueError(f"param {i} ({tuple(flat[i].shape)}) now lives in other memory "
                             f"(p.data was replaced, e.g. by model.to() or "
                             f"load_state_dict(assign=True)); the optimizer steps the memory it "
                             f"was built on: build a new optimizer after converting the model "
                             f"(load_state_dict carries the state over)")

    def _new_grad_views(self, grads: list[Any]) -> list[Any]:
        flat = self._flat
        cached = self._grad_tensors
        arrays = [None if g is None else a
                  for g, a in zip(grads, self._grad_arrays)]
        new = [i for i, g, c in zip(range(len(grads)), grads, cached)
               if g is not c and g is not None]
        if new:
            # The common case (a dense, contiguous CPU grad of a supported dtype and the
            # param's size) is checked in one expression per grad and viewed in one C call;
            # anything else takes _grad_array, which raises the precise error or adapts it.
            # (torch's .grad setter and autograd already hold a grad to its param's shape
            # and device, and the param's memory was checked above; its size is checked
            # again here because the view's bounds depend on it)
            sizes = self._sizes
            gs = [grads[i] for i in new]
            nums = [_TYPENUMS.get(g.dtype) for g in gs]
            fast = [] if self._sparse_grads else [
                i for i, g, num in zip(new, gs, nums)
                if num is not None and g.layout is _STRIDED and g.is_contiguous()
                and g.numel() == sizes[i]]
            if len(fast) != len(new):
                slow = sorted(set(new) - set(fast))
                for i in slow:
                    arrays[i] = self._grad_array(grads[i], flat[i], i)
            if fast:
                if len(fast) != len(new):
                    gs = [grads[i] for i in fast]
                    nums = [_TYPENUMS[g.dtype] for g in gs]
                views = _kernels.views_at([self._templates[i] for i in fast],
                                          [g.data_ptr() for g in gs], nums, gs)
                for i, v in zip(fast, views):
                    arrays[i] = v
        # (cached only once every grad checked)
        self._grad_tensors = tuple(grads)
        self._grad_arrays = arrays
        return arrays

    def _grad_array(self, g: Any, p: torch.Tensor, i: int) -> Any:
        what = f"the grad of param {i}"
        if not isinstance(g, torch.Tensor):
            raise TypeError(f"{what} must be a torch.Tensor, got {type(g).__name__}")
        if g.layout is not torch.strided and g.device.type == "cpu":
            raise ValueError(f"{what} is sparse ({g.layout}); {type(self).__name__} takes "
                             f"dense grads (only SparseAdam takes sparse ones): use a dense "
                             f"embedding (sparse=False) or SparseAdam for it")
        err = device_error(g, what)
        if err is not None:
            raise ValueError(err)
        if g.dtype not in NUMPY_DTYPES:
            raise TypeError(f"{what} has dtype {g.dtype}; grads must be float32, float64, "
                            f"bfloat16 or float16 (param dtype {p.dtype})")
        if g.shape != p.shape:
            raise ValueError(f"{what} has shape {tuple(g.shape)}, but the param has shape "
                             f"{tuple(p.shape)}; a grad must have its param's shape")
        if not g.is_contiguous():
            raise ValueError(f"{what} is not contiguous (strides {g.stride()}); the fused "
                             f"kernels read contiguous grads: set p.grad = p.grad.contiguous()")
        return as_array(g)

    def _sync_hyperparameters(self) -> None:
        for tg, fg, keys in zip(self.param_groups, self._fused.param_groups, self._hyper_keys):
            for k in keys:
                v = tg[k]
                if type(v) is torch.Tensor:
                    v = v.item()
                fg[k] = v

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One fused, in-place update of every param that has a grad; returns the closure's
        loss (None without a closure). Everything is checked before anything is written."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        found_inf = getattr(self, "found_inf", None)
        if found_inf is not None and float(found_inf) != 0.0:
            return loss         # GradScaler found Inf/NaN: skip, nothing changes
        grad_scale = getattr(self, "grad_scale", None)
        scale = None if grad_scale is None else float(grad_scale)
        grads = self._grads()
        self._sync_hyperparameters()
        if scale is None:
            self._fused.step(grads)
        else:
            self._fused.step(grads, grad_scale=scale)
        # Group entries the step itself writes (Prodigy's shared D state) go back to torch's
        # groups, so that the next sync does not overwrite them with stale values.
        written = getattr(self._fused, "group_state_keys", ())
        if written:
            for tg, fg in zip(self.param_groups, self._fused.param_groups):
                for k in written:
                    if k in fg:
                        tg[k] = fg[k]
        self._state_dirty = True
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """torch's ``zero_grad``. With ``set_to_none`` the views of the dropped grads are
        released too, so their memory is freed as soon as torch lets it go."""
        super().zero_grad(set_to_none)
        if set_to_none:
            self._grad_tensors = (None,) * len(self._flat)
            self._grad_arrays = [None] * len(self._flat)

    # -- state ------------------------------------------------------------------------------
    @property
    def state(self) -> defaultdict[torch.Tensor, dict[str, Any]]:
        """param -> its state, in torch's format: buffers are tensors sharing memory with the
        fused optimizer's; ``step`` and scalar state are 0-d tensors (copies)."""
        if self._state_dirty and getattr(self, "_ready", False):
            self._torch_state = self._state_from_fused()
            self._state_dirty = False
        return self._torch_state

    @state.setter
    def state(self, value: Any) -> None:
        # torch's __init__ assigns an empty state; ours is always derived from the fused one.
        self._torch_state = value

    def _state_from_fused(self) -> defaultdict[torch.Tensor, dict[str, Any]]:
        out: defaultdict[torch.Tensor, dict[str, Any]] = defaultdict(dict)
        for i, st in self._fused.state.items():
            out[self._flat[i]] = self._torch_entry(st)
        return out

    def _torch_entry(self, st: Mapping[str, Any]) -> dict[str, Any]:
        """A state entry in torch's format: arrays as tensors sharing their memory (also in
        lists, as LBFGS's history), and the scalars torch keeps as 0-d tensors as those."""
        name = type(self).__name__
        tensor_scalars = _TENSOR_SCALARS.get(name, _SPEC_TENSOR_SCALARS)
        if tensor_scalars is _SPEC_TENSOR_SCALARS:
            tensor_scalars = frozenset(self._fused._scalar_state) | {"step"}
        entry: dict[str, Any] = {}
        for k, v in st.items():
            if k == "step" and name in _NO_STEP_IN_TORCH:
                continue
            if k in tensor_scalars and not isinstance(v, np.ndarray):
                entry[k] = torch.tensor(float(v), dtype=scalar_dtype())
            else:
                entry[k] = _to_torch(v)
        return entry

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a checkpoint in torch's format: torch.optim's (same keys) or ours. It is
        checked in full before anything changes; a rejected one changes nothing."""
        state_dict = dict(state_dict)
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= set(state_dict):
            raise TypeError("state_dict must be a dict with 'state' and 'param_groups', as "
                            "Optimizer.state_dict() returns")
        saved = list(state_dict["param_groups"])
        groups = self.param_groups
        if len(saved) != len(groups):
            raise ValueError(f"loaded state dict has {len(saved)} parameter groups, this "
                             f"optimizer has {len(groups)}")
        for gi, (g, sg) in enumerate(zip(groups, saved)):
            if len(sg["params"]) != len(g["params"]):
                raise ValueError(f"loaded state dict's param group {gi} has "
                                 f"{len(sg['params'])} params, this optimizer's has "
                                 f"{len(g['params'])}: the checkpoint was saved from another "
                                 f"model or param grouping")
        self._fused.load_state_dict(self._fused_state_dict(state_dict, saved))
        # Checked and loaded: now torch's side, as torch does it (the saved hyperparameters
        # replace ours, the params stay); keys only fusedoptim has keep their values.
        new_groups = []
        for g, sg, keys in zip(groups, saved, self._hyper_keys):
            ng = {k: g[k] for k in keys if k not in sg}
            ng.update(sg)
            ng["params"] = g["params"]
            if "param_names" in g:
                ng["param_names"] = g["param_names"]
            new_groups.append(ng)
        self.param_groups = new_groups
        self._state_dirty = True
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def _fused_state_dict(self, state_dict: Mapping[str, Any],
                          saved: list[Mapping[str, Any]]) -> dict[str, Any]:
        """A torch-format state_dict as the fused optimizer's load_state_dict takes it."""
        fused = self._fused
        ids = {sid: i for i, sid in enumerate(itertools.chain.from_iterable(
            sg["params"] for sg in saved))}
        groups = []
        start = 0
        for sg, fg, keys in zip(saved, fused.param_groups, self._hyper_keys):
            d = {k: _plain(sg[k]) for k in keys if k in sg}
            d["params"] = list(range(start, start + len(fg["params"])))
            start += len(fg["params"])
            groups.append(d)
        state: dict[int, dict[str, Any]] = {}
        for sid, st in state_dict["state"].items():
            if sid not in ids:
                raise ValueError(f"loaded state dict has state for param id {sid!r}, which "
                                 f"no param group lists")
            state[ids[sid]] = self._fused_entry(ids[sid], sid, st)
        out: dict[str, Any] = {"state": state, "param_groups": groups}
        if "seed" in state_dict:
            out["seed"] = state_dict["seed"]
        if hasattr(fused, "train_mode") and saved and "train_mode" in saved[0]:
            out["train_mode"] = _plain(saved[0]["train_mode"])   # Schedule-Free's mode
            # A schedulefree package checkpoint keeps the step count and the schedule's
            # running values per group: each param of the group takes them.
            for sg, d in zip(saved, groups):
                for key, name in (("k", "step"), ("weight_sum", "weight_sum"),
                                  ("lr_max", "lr_max")):
                    if key in sg:
                        for i in d["params"]:
                            if i in state:
                                state[i].setdefault(name, _plain(sg[key]))
        return out

    def _fused_entry(self, i: int, sid: Any, st: Mapping[str, Any]) -> dict[str, Any]:
        """Param i's state entry (torch's format, id `sid` in the checkpoint) as the fused
        optimizer loads it: tensors as arrays, 0-d tensors as numbers."""
        fused = self._fused
        spec_built = isinstance(fused, _FusedOptimizer)
        layout: Any = None
        p: Any = None
        if spec_built:
            gi = next(k for k, sl in enumerate(fused._group_slices) if i in sl)
            layout = fused._layouts[gi]
            p = fused.param_groups[gi]["params"][i - fused._group_slices[gi].start]
        entry: dict[str, Any] = {}
        for k, v in st.items():
            if isinstance(v, torch.Tensor) and v.dim() == 0:
                x = v.item()
                entry[k] = (int(x) if k in _INTEGER_STATE and float(x).is_integer() else x)
                continue
            v = _to_numpy(v, f"state_dict['state'][{sid!r}][{k!r}]")
            if (spec_built and isinstance(v, np.ndarray) and v.dtype in _FLOAT_ARRAYS
                    and k in fused._slots + (MASTER,)):
                # torch casts float state to the param's dtype on load; we cast it to what
                # this optimizer keeps (float32 under master weights or quantized state)
                v = v.astype(_float_state_dtype(layout.precision, k, p.size))
            entry[k] = v
        if (spec_built and layout.precision.master and MASTER not in entry
                and len(entry) > 1):
            # torch keeps no float32 master copy: start it from the (rounded) param
            entry[MASTER] = np.asarray(p, dtype=np.float32).copy()
        return entry

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError(f"{type(self).__name__} cannot be pickled or deep-copied: it holds "
                        f"pointer tables into the params' memory. Save opt.state_dict() "
                        f"(torch.save works on it) and load it into a new optimizer")



Optimizer.step = _with_hooks(Optimizer.step)  # type: ignore[method-assign]


class SparseGradOptimizer(Optimizer):
    """The drop-in for ``SparseAdam``: grads are torch's row-sparse COO tensors (an
    ``nn.Embedding(sparse=True)`` grad), handed to the kernel as
    :class:`fusedoptim.SparseGrad` (indices and values, viewed, not copied; duplicate rows
    are summed by the kernel, as torch's ``coalesce()`` sums them)."""

    _sparse_grads = True

    def _grad_array(self, g: Any, p: torch.Tensor, i: int) -> Any:
        from ..optim.sparse_adam import SparseGrad
        what = f"the grad of param {i}"
        if not isinstance(g, torch.Tensor):
            raise TypeError(f"{what} must be a torch.Tensor, got {type(g).__name__}")
        if g.layout is torch.strided:
            raise RuntimeError(f"{type(self).__name__} does not support dense gradients "
                               f"({what} is dense), please consider Adam instead")
        if g.layout is not torch.sparse_coo or g.device.type != "cpu":
            raise ValueError(f"{what} has layout {g.layout} on {g.device}; "
                             f"{type(self).__name__} takes CPU sparse_coo grads")
        if g.shape != p.shape or g.sparse_dim() != 1:
            raise ValueError(f"{what} has shape {tuple(g.shape)} with {g.sparse_dim()} sparse "
                             f"dims; it must be row-sparse (sparse_dim 1) of its param's "
                             f"shape {tuple(p.shape)}")
        if g.dtype != p.dtype:
            raise TypeError(f"{what} has dtype {g.dtype}; it must be its param's {p.dtype}")
        indices = g._indices()[0].contiguous().numpy()
        values = as_array(g._values().contiguous())
        return SparseGrad(indices, values)


class ClosureOptimizer(Optimizer):
    """The drop-in for ``LBFGS``: ``step(closure)`` with torch's closure, which re-evaluates
    the model, calls ``backward()`` and returns the loss; the fused LBFGS reads ``p.grad``
    after each evaluation."""

    _step_supports_amp_scaling = False

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        if closure is None:
            raise RuntimeError(f"{type(self).__name__} requires a closure: step(closure), "
                               f"where closure() zeroes the grads, evaluates the model, calls "
                               f"backward() and returns the loss")
        first: list[Any] = []

        def fused_closure() -> tuple[float, list[Any]]:
            with torch.enable_grad():
                loss = closure()
            if not first:
                first.append(loss)
            # detach(): float() of a tensor that requires grad warns in torch
            value = loss.detach() if isinstance(loss, torch.Tensor) else loss
            return float(value), self._grads()

        self._sync_hyperparameters()
        self._fused.step(fused_closure)
        self._state_dirty = True
        return first[0] if first else None
