"""Adam, AdamW, AMSGrad and the notes' Adam without bias correction: one kernel ("adam")."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, NamedTuple

from .. import _validation as v
from .._spec import OptSpec, Slot
from ..optimizer import Optimizer

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .._precision import PrecisionOptions
    from .._typing import ParamsArg


class AdamHyper(NamedTuple):
    """Adam's hyperparameters, validated: the scalars' and the functional call's arguments,
    with the functional defaults (lr, beta1, beta2 and eps are required there)."""

    lr: Annotated[float, v.finite_nonneg]
    beta1: Annotated[float, v.unit_interval]
    beta2: Annotated[float, v.unit_interval]
    eps: Annotated[float, v.positive]
    weight_decay: Annotated[float, v.finite_nonneg] = 0.0
    amsgrad: Annotated[bool, v.flag] = False
    maximize: Annotated[bool, v.flag] = False
    decoupled_weight_decay: Annotated[bool, v.flag] = False
    bias_correction: Annotated[bool, v.flag] = True


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


ADAM_SPEC = OptSpec(
    "adam", AdamHyper, adam_scalars, pairs={"betas": ("beta1", "beta2")},
    state=(Slot("exp_avg", "exp_avgs"), Slot("exp_avg_sq", "exp_avg_sqs"),
           Slot("max_exp_avg_sq", "max_exp_avg_sqs", used="amsgrad", check_unused=True)),
    doc="""Fused Adam/AdamW step over lists (see :class:`fusedoptim.Adam` for the rule).

    ``max_exp_avg_sqs`` may be None unless ``amsgrad``.""")

ADAMW_SPEC = ADAM_SPEC.variant(
    "adamw", fixed={"decoupled_weight_decay": True}, defaults={"weight_decay": 1e-2},
    doc=""":func:`adam` with decoupled weight decay (AdamW).""")

#: Validate Adam hyperparameters (AdamHyper's fields, in order); return them canonical.
check_adam = ADAM_SPEC.check


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
        **precision: ``master_weights``, ``state_dtype``, ``min_quantized_size``,
            ``rank1_normalization``, ``stochastic_rounding``, ``seed``: half-precision params,
            master weights and bfloat16/int8/int4 state (see :class:`fusedoptim.Optimizer`).
    """

    spec = ADAM_SPEC

    def __init__(self, params: ParamsArg, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False, *, maximize: bool = False,
                 decoupled_weight_decay: bool = False, bias_correction: bool = True,
                 skip_nonfinite: bool = False,
                 **precision: Unpack[PrecisionOptions]) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, maximize=maximize,
                                      decoupled_weight_decay=decoupled_weight_decay,
                                      bias_correction=bias_correction),
                         skip_nonfinite=skip_nonfinite, **precision)


class AdamW(Adam):
    r"""AdamW (Loshchilov & Hutter, 2019, "Decoupled Weight Decay Regularization").

    Adam with decoupled weight decay: ``p = p * (1 - lr * weight_decay)`` before the Adam
    update (the notes' ``x <- x * (1 - alpha * lambda)``), so the decay is not rescaled by the
    adaptive denominator. Same arguments as :class:`Adam`, with torch.optim.AdamW's default
    ``weight_decay=1e-2``.
    """

    spec = ADAMW_SPEC

    def __init__(self, params: ParamsArg, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False,
                 bias_correction: bool = True, skip_nonfinite: bool = False,
                 **precision: Unpack[PrecisionOptions]) -> None:
        Optimizer.__init__(self, params, dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
            maximize=maximize, decoupled_weight_decay=True, bias_correction=bias_correction),
            skip_nonfinite=skip_nonfinite, **precision)
