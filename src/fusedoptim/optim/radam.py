"""RAdam: Adam with a rectified adaptive learning rate (kernel "radam")."""

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


class RAdamHyper(NamedTuple):
    """RAdam's hyperparameters, validated (the functional call's, with its defaults)."""

    lr: Annotated[float, v.finite_nonneg]
    beta1: Annotated[float, v.unit_interval]
    beta2: Annotated[float, v.unit_interval]
    eps: Annotated[float, v.positive]
    weight_decay: Annotated[float, v.finite_nonneg] = 0.0
    decoupled_weight_decay: Annotated[bool, v.flag] = False
    maximize: Annotated[bool, v.flag] = False


def radam_scalars(step: int, lr: float, beta1: float, beta2: float, eps: float,
                  weight_decay: float, decoupled_weight_decay: bool,
                  maximize: bool) -> tuple[float, ...]:
    """The kernel's scalars for one step count (order: _kernels.SCALARS['radam']). The
    rho_t > 5 test picks the rectified or the plain momentum update for this step."""
    bias_correction1 = 1.0 - beta1 ** step
    bias_correction2 = 1.0 - beta2 ** step
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    rho_t = rho_inf - 2.0 * step * beta2 ** step / bias_correction2
    mode = 0
    if weight_decay != 0.0:
        mode = 2 if decoupled_weight_decay else 1
    if rho_t > 5.0:
        rect = math.sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                         / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
        step_size = lr * rect * math.sqrt(bias_correction2) / bias_correction1
        mode |= 4
    else:
        step_size = lr / bias_correction1
    return (-1.0 if maximize else 1.0, beta1, 1.0 - beta1, beta2, 1.0 - beta2, weight_decay,
            1.0 - lr * weight_decay, eps, step_size, float(mode))


RADAM_SPEC = OptSpec(
    "radam", RAdamHyper, radam_scalars, pairs={"betas": ("beta1", "beta2")},
    state=(Slot("exp_avg", "exp_avgs"), Slot("exp_avg_sq", "exp_avg_sqs")),
    doc="Fused RAdam step over lists (see :class:`fusedoptim.RAdam` for the rule).")

#: Validate RAdam hyperparameters (RAdamHyper's fields, in order); return them canonical.
check_radam = RADAM_SPEC.check


class RAdam(Optimizer):
    r"""RAdam (Liu et al., 2020, "On the Variance of the Adaptive Learning Rate and Beyond").

    For each param, with g the gradient (negated when ``maximize``) and t the step::

        g      = g + weight_decay * p        (L2; when decoupled_weight_decay: p *= 1 - lr*wd)
        m      = beta1 * m + (1 - beta1) * g
        v      = beta2 * v + (1 - beta2) * g * g
        rho_inf = 2 / (1 - beta2) - 1
        rho_t  = rho_inf - 2 t beta2^t / (1 - beta2^t)
        if rho_t > 5:
            r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
            p   = p - lr r_t sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + eps)
        else:
            p   = p - lr / (1 - beta1^t) * m          (un-rectified; v is still updated)

    The branch is chosen per step (and per param step count) in Python; the kernel gets a
    flag and one folded step size. eps is added to sqrt(v) before the bias correction, as
    in torch.

    Args (torch.optim.RAdam's names and defaults):
        params: list or dict of float32/float64 C-contiguous arrays, or param groups.
        lr (float): learning rate, default 1e-3, >= 0. May change between steps.
        betas (tuple): (beta1, beta2), default (0.9, 0.999), each in [0, 1).
        eps (float): default 1e-8, > 0.
        weight_decay (float): default 0, >= 0; coupled L2 unless decoupled_weight_decay.
        decoupled_weight_decay (bool): default False (True: decay as in AdamW).
        maximize (bool): default False; ascend instead of descend.
        skip_nonfinite (bool): default False; skip steps whose grads are not all
            finite (see :class:`fusedoptim.Optimizer`).
        **precision: ``master_weights``, ``state_dtype``, ``min_quantized_size``,
            ``rank1_normalization``, ``stochastic_rounding``, ``seed``: half-precision params,
            master weights and bfloat16/int8/int4 state (see :class:`fusedoptim.Optimizer`).

    State per param: ``step``, ``exp_avg``, ``exp_avg_sq``.
    """


    spec = RADAM_SPEC

    def __init__(self, params: ParamsArg, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decoupled_weight_decay: bool = False, *,
                 maximize: bool = False, skip_nonfinite: bool = False,
                 **precision: Unpack[PrecisionOptions]) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      decoupled_weight_decay=decoupled_weight_decay,
                                      maximize=maximize),
                         skip_nonfinite=skip_nonfinite, **precision)
