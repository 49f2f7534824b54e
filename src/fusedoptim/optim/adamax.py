"""Adamax: Adam with an exponentially weighted infinity norm (kernel "adamax")."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, NamedTuple

from .. import _validation as v
from .._spec import OptSpec, Slot
from ..optimizer import Optimizer

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .._precision import PrecisionOptions
    from .._typing import ParamsArg


class AdamaxHyper(NamedTuple):
    """Adamax's hyperparameters, validated (the functional call's, with its defaults)."""

    lr: Annotated[float, v.finite_nonneg]
    beta1: Annotated[float, v.unit_interval]
    beta2: Annotated[float, v.unit_interval]
    eps: Annotated[float, v.positive]
    weight_decay: Annotated[float, v.finite_nonneg] = 0.0
    maximize: Annotated[bool, v.flag] = False


def adamax_scalars(step: int, lr: float, beta1: float, beta2: float, eps: float,
                   weight_decay: float, maximize: bool) -> tuple[float, ...]:
    """The kernel's scalars for one step count (order: _kernels.SCALARS['adamax'])."""
    step_size = lr / (1.0 - beta1 ** step)
    return (-1.0 if maximize else 1.0, beta1, 1.0 - beta1, beta2, weight_decay, eps,
            step_size, 1.0 if weight_decay != 0.0 else 0.0)


ADAMAX_SPEC = OptSpec(
    "adamax", AdamaxHyper, adamax_scalars, pairs={"betas": ("beta1", "beta2")},
    state=(Slot("exp_avg", "exp_avgs"), Slot("exp_inf", "exp_infs")),
    doc="Fused Adamax step over lists (see :class:`fusedoptim.Adamax` for the rule).")

#: Validate Adamax hyperparameters (AdamaxHyper's fields, in order); return them canonical.
check_adamax = ADAMAX_SPEC.check


class Adamax(Optimizer):
    r"""Adamax (Kingma & Ba, 2015, "Adam: A Method for Stochastic Optimization", section 7.1).

    Adam with the second moment replaced by an exponentially weighted infinity norm. For
    each param, with g the gradient (negated when ``maximize``) and t the step::

        g = g + weight_decay * p                   (L2 penalty, when weight_decay != 0)
        m = beta1 * m + (1 - beta1) * g
        u = max(beta2 * u, |g| + eps)
        p = p - lr / (1 - beta1^t) * m / u

    eps is added to |g| inside the max, as torch does (the paper has no eps), so u > 0.
    A NaN on either side of the max gives NaN, like ``torch.maximum``.

    Args (torch.optim.Adamax's names and defaults):
        params: list or dict of float32/float64 C-contiguous arrays, or param groups.
        lr (float): learning rate, default 2e-3, >= 0. May change between steps.
        betas (tuple): (beta1, beta2), default (0.9, 0.999), each in [0, 1).
        eps (float): default 1e-8, > 0.
        weight_decay (float): L2 penalty, default 0, >= 0.
        maximize (bool): default False; ascend instead of descend.
        skip_nonfinite (bool): default False; skip steps whose grads are not all
            finite (see :class:`fusedoptim.Optimizer`).
        **precision: ``master_weights``, ``state_dtype``, ``min_quantized_size``,
            ``rank1_normalization``, ``stochastic_rounding``, ``seed``: half-precision params,
            master weights and bfloat16/int8/int4 state (see :class:`fusedoptim.Optimizer`).

    State per param: ``step``, ``exp_avg`` (m), ``exp_inf`` (u).
    """


    spec = ADAMAX_SPEC

    def __init__(self, params: ParamsArg, lr: float = 2e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, *, maximize: bool = False,
                 skip_nonfinite: bool = False,
                 **precision: Unpack[PrecisionOptions]) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      maximize=maximize),
                         skip_nonfinite=skip_nonfinite, **precision)
