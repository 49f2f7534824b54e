"""Adadelta: one kernel ("adadelta")."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, NamedTuple

from .. import _validation as v
from .._spec import OptSpec, Slot
from ..optimizer import Optimizer

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .._precision import PrecisionOptions
    from .._typing import ParamsArg


class AdadeltaHyper(NamedTuple):
    """Adadelta's hyperparameters, validated (the functional call's, with its defaults)."""

    lr: Annotated[float, v.finite_nonneg]
    rho: Annotated[float, v.unit_closed]
    eps: Annotated[float, v.positive]
    weight_decay: Annotated[float, v.finite_nonneg] = 0.0
    maximize: Annotated[bool, v.flag] = False


def adadelta_scalars(step: int, lr: float, rho: float, eps: float, weight_decay: float,
                     maximize: bool) -> tuple[float, ...]:
    """The kernel's scalars (order: _kernels.SCALARS['adadelta']); step does not enter."""
    return (-1.0 if maximize else 1.0, weight_decay, rho, 1.0 - rho, eps, lr,
            1.0 if weight_decay != 0.0 else 0.0)


ADADELTA_SPEC = OptSpec(
    "adadelta", AdadeltaHyper, adadelta_scalars,
    state=(Slot("square_avg", "square_avgs"), Slot("acc_delta", "acc_deltas")),
    doc="Fused Adadelta step over lists (see :class:`fusedoptim.Adadelta` for the rule).")

#: Validate Adadelta hyperparameters (AdadeltaHyper's fields, in order); return them canonical.
check_adadelta = ADADELTA_SPEC.check


class Adadelta(Optimizer):
    r"""Adadelta (Zeiler, 2012, "ADADELTA: An Adaptive Learning Rate Method").

    For each param, with g the gradient (negated when ``maximize``)::

        g  = g + weight_decay * p                       (L2, when weight_decay != 0)
        v  = rho * v + (1 - rho) * g * g                (running average of g^2)
        dx = sqrt(u + eps) / sqrt(v + eps) * g          (u: running average of dx^2)
        u  = rho * u + (1 - rho) * dx * dx
        p  = p - lr * dx

    u accumulates the squared *update* dx^2, as in Zeiler's paper (Algorithm 1) and torch.
    The lecture notes write the second accumulator as a running average of theta^2; that is a
    typo for the squared update, and this class follows the paper.

    Args (torch.optim.Adadelta's names and defaults):
        params: list or dict of float32/float64 C-contiguous arrays, or param groups.
        lr (float): scale applied to dx, default 1.0, finite >= 0.
        rho (float): decay of both running averages, default 0.9, in [0, 1].
        eps (float): default 1e-6, > 0.
        weight_decay (float): default 0, finite >= 0.
        maximize (bool): default False; ascend instead of descend.
        skip_nonfinite (bool): default False; skip steps whose grads are not all
            finite (see :class:`fusedoptim.Optimizer`).
        **precision: ``master_weights``, ``state_dtype``, ``min_quantized_size``,
            ``rank1_normalization``, ``stochastic_rounding``, ``seed``: half-precision params,
            master weights and bfloat16/int8/int4 state (see :class:`fusedoptim.Optimizer`).

    State per param: ``square_avg`` (v), ``acc_delta`` (u) and ``step``.
    """


    spec = ADADELTA_SPEC

    def __init__(self, params: ParamsArg, lr: float = 1.0, rho: float = 0.9, eps: float = 1e-6,
                 weight_decay: float = 0.0, *, maximize: bool = False,
                 skip_nonfinite: bool = False,
                 **precision: Unpack[PrecisionOptions]) -> None:
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay,
                                      maximize=maximize),
                         skip_nonfinite=skip_nonfinite, **precision)
