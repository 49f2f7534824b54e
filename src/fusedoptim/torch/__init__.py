"""fusedoptim.torch: drop-in torch.optim optimizers for CPU training, on fusedoptim's kernels.

::

    import torch, fusedoptim.torch as fot
    opt = fot.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-4, total_steps=10_000)
    for x, y in loader:
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True); loss.backward()
        fot.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(); sched.step()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, "ckpt.pt")

Every fusedoptim optimizer is here under the same name, arguments and defaults, as a real
subclass of ``torch.optim.Optimizer`` (param groups, hooks, ``zero_grad``, ``step(closure)``,
``state_dict``/``load_state_dict`` in torch's format, so checkpoints move both ways between
``torch.optim.X`` and ``fusedoptim.torch.X``). torch's schedulers, ``swa_utils`` and
``torch.amp.GradScaler`` work unchanged. See docs/torch.md.

Needs torch (``pip install "fusedoptim[torch]"``).
"""

from __future__ import annotations

try:
    import torch as _torch
except ImportError as exc:  # pragma: no cover - exercised in a torch-free environment
    raise ImportError(
        "fusedoptim.torch needs PyTorch: install it with pip install \"fusedoptim[torch]\" "
        f"(or pip install torch). Original error: {exc}") from None

import inspect as _inspect

from .. import optim as _optim
from ._grad_utils import clip_grad_norm_, clip_grad_value_
from ._optimizer import ClosureOptimizer, Optimizer, SparseGradOptimizer

__all__ = ["Optimizer", "clip_grad_norm_", "clip_grad_value_"]

#: fusedoptim optimizers whose step is not step(grads): the drop-in base that adapts them
_BASES: dict[str, type[Optimizer]] = {"SparseAdam": SparseGradOptimizer,
                                      "LBFGS": ClosureOptimizer}


def _drop_in(fused: type) -> type[Optimizer]:
    """The torch.optim subclass stepping through `fused`."""
    doc = (f"``torch.optim``-compatible :class:`fusedoptim.{fused.__name__}` for torch CPU "
           f"tensors (see :class:`fusedoptim.torch.Optimizer`). Arguments, defaults and "
           f"update rule are fusedoptim.{fused.__name__}'s:\n\n" + (fused.__doc__ or ""))
    base = _BASES.get(fused.__name__, Optimizer)
    attrs: dict[str, object] = {"_fused_class": fused, "__doc__": doc, "__module__": __name__,
                                "__qualname__": fused.__name__}
    if base is Optimizer:
        # GradScaler's fused protocol only where the step divides by a grad_scale itself;
        # elsewhere GradScaler unscales the grads first, as for any torch optimizer.
        attrs["_step_supports_amp_scaling"] = (
            "grad_scale" in _inspect.signature(getattr(fused, "step")).parameters)
    for mode in ("train", "eval"):
        # Schedule-Free's mode switches (the params move between its y and x sequences)
        if callable(getattr(fused, mode, None)):
            attrs[mode] = _forward(mode, getattr(fused, mode).__doc__)
    return type(fused.__name__, (base,), attrs)


def _forward(name: str, doc: str | None) -> object:
    """A method of the drop-in that calls the inner optimizer's method `name`."""
    def method(self: Optimizer) -> None:
        getattr(self._fused, name)()
        # the mode in torch's groups, as the schedulefree package keeps it: in state_dict()
        for group in self.param_groups:
            group["train_mode"] = self._fused.train_mode
    method.__name__ = method.__qualname__ = name
    method.__doc__ = doc
    return method


for _name in _optim.__all__:
    _cls = getattr(_optim, _name)
    if isinstance(_cls, type) and hasattr(_cls, "step") and hasattr(_cls, "state_dict"):
        globals()[_name] = _drop_in(_cls)
        __all__.append(_name)
del _name, _cls, _torch
