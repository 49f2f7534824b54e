"""Adam, AdamW, AMSGrad and the notes' Adam without bias correction: one kernel ("adam")."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .. import _validation as v
from ..optimizer import Optimizer

if TYPE_CHECKING:
    from .._typing import ParamsArg

    #: check_adam's result: (lr, beta1, beta2, eps, weight_decay, amsgrad, maximize,
    #: decoupled_weight_decay, bias_correction)
    AdamHyper = tuple[float, float, float, float, float, bool, bool, bool, bool]

# Canonical hyperparameter tuple: the order adam_scalars and check_adam use.
_FIELDS = ("lr", "beta1", "beta2", "eps", "weight_decay", "amsgrad", "maximize",
           "decoupled_weight_decay", "bias_correction")


def check_adam(lr: object, beta1: object, beta2: object, eps: object, weight_decay: object,
               amsgrad: object, maximize: object, decoupled_weight_decay: object,
               bias_correction: object) -> AdamHyper:
    """Validate Adam hyperparameters; return them canonical (floats and bools)."""
    return (v.finite_nonneg(lr, "lr"), v.unit_interval(beta1, "betas[0]"),
            v.unit_interval(beta2, "betas[1]"), v.positive(eps, "eps"),
            v.finite_nonneg(weight_decay, "weight_decay"), v.flag(amsgrad, "amsgrad"),
            v.flag(maximize, "maximize"),
            v.flag(decoupled_weight_decay, "decoupled_weight_decay"),
            v.flag(bias_correction, "bias_correction"))


def adam_scalars(step: int, lr: float, beta1: float, beta2: float, eps: float,
                 weight_decay: float, amsgrad: bool, maximize: bool,
                 decoupled_weight_decay: bool, bias_correction: bool) -> tuple[float, ...]:
    """The kernel's scalars for one step count (order: _kernels.SCALARS['adam'])."""
    if bias_correction:
        step_size = lr / (1.0 - beta1 ** step)
        inv_bias_correction2_sqrt = 1.0 / math.sqrt(1.0 - beta2 ** step)
    else:
        step_size = lr
        inv_bias_correction2_sqrt = 1.0
    mode = 0
    if weight_decay != 0.0:
        mode = 2 if decoupled_weight_decay else 1
    if amsgrad:
        mode |= 4
    return (-1.0 if maximize else 1.0, beta1, 1.0 - beta1, beta2, 1.0 - beta2, weight_decay,
            1.0 - lr * weight_decay, eps, step_size, inv_bias_correction2_sqrt, float(mode))


class Adam(Optimizer):
    r"""Adam (Kingma & Ba, 2015, "Adam: A Method for Stochastic Optimization").

    For each param, with g the gradient (negated when ``maximize``) and t the step::

        g      = g + weight_decay * p             (L2; when decoupled_weight_decay: p *= 1 - lr*wd)
        m      = beta1 * m + (1 - beta1) * g
        v      = beta2 * v + (1 - beta2) * g * g
        v_max  = max(v_max, v)                     (amsgrad; Reddi et al. 2018) then v := v_max
        p      = p - lr / (1 - beta1^t) * m / (sqrt(v) * (1 / sqrt(1 - beta2^t)) + eps)

    eps is added after the bias correction, and AMSGrad keeps the running max of the raw
    second moment, as in torch. ``bias_correction=False`` is the notes' "Adam (90%)" form,
    ``p = p - lr * m / (sqrt(v) + eps)``.

    Args (torch.optim.Adam's names and defaults):
        params: list or dict of float32/float64 C-contiguous arrays, or param groups.
        lr (float): learning rate, default 1e-3. May change between steps.
        betas (tuple): (beta1, beta2), default (0.9, 0.999), each in [0, 1).
        eps (float): default 1e-8, > 0.
        weight_decay (float): default 0; coupled L2 unless decoupled_weight_decay.
        amsgrad (bool): default False.
        maximize (bool): default False; ascend instead of descend.
        decoupled_weight_decay (bool): default False; True gives AdamW.
        bias_correction (bool): default True; False is the notes' variant (not in torch).
        skip_nonfinite (bool): default False; skip steps whose grads are not all
            finite (see :class:`fusedoptim.Optimizer`).
    """

    _kernel = "adam"
    _slots = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    _hyper_keys = ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize",
                   "decoupled_weight_decay", "bias_correction")

    def __init__(self, params: ParamsArg, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False, *, maximize: bool = False,
                 decoupled_weight_decay: bool = False, bias_correction: bool = True,
                 skip_nonfinite: bool = False) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, maximize=maximize,
                                      decoupled_weight_decay=decoupled_weight_decay,
                                      bias_correction=bias_correction),
                         skip_nonfinite=skip_nonfinite)

    def _check_hyper(self, key: tuple[Any, ...]) -> AdamHyper:
        lr, betas, eps, wd, amsgrad, maximize, decoupled, bias_correction = key
        b1, b2 = v.pair(betas, "betas")
        return check_adam(lr, b1, b2, eps, wd, amsgrad, maximize, decoupled, bias_correction)

    def _slots_in_use(self, hyper: AdamHyper) -> tuple[str, ...]:
        return self._slots if hyper[5] else self._slots[:2]

    def _scalars(self, step: int, hyper: AdamHyper) -> tuple[float, ...]:
        return adam_scalars(step, *hyper)

    def _functional_kwargs(self, hyper: AdamHyper) -> dict[str, Any]:
        return dict(zip(_FIELDS, hyper))


class AdamW(Adam):
    r"""AdamW (Loshchilov & Hutter, 2019, "Decoupled Weight Decay Regularization").

    Adam with decoupled weight decay: ``p = p * (1 - lr * weight_decay)`` before the Adam
    update (the notes' ``x <- x * (1 - alpha * lambda)``), so the decay is not rescaled by the
    adaptive denominator. Same arguments as :class:`Adam`, with torch.optim.AdamW's default
    ``weight_decay=1e-2``.
    """

    def __init__(self, params: ParamsArg, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False,
                 bias_correction: bool = True, skip_nonfinite: bool = False) -> None:
        Optimizer.__init__(self, params, dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
            maximize=maximize, decoupled_weight_decay=True, bias_correction=bias_correction),
            skip_nonfinite=skip_nonfinite)
