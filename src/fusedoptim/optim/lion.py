"""Lion: evolved sign momentum (kernel "lion"). torch.optim has no Lion."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, NamedTuple

from .. import _validation as v
from .._spec import OptSpec, Slot
from ..optimizer import Optimizer

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .._precision import PrecisionOptions
    from .._typing import ParamsArg


class LionHyper(NamedTuple):
    """Lion's hyperparameters, validated (the functional call's, with its defaults)."""

    lr: Annotated[float, v.finite_nonneg]
    beta1: Annotated[float, v.unit_interval]
    beta2: Annotated[float, v.unit_interval]
    weight_decay: Annotated[float, v.finite_nonneg] = 0.0
    maximize: Annotated[bool, v.flag] = False


def lion_scalars(step: int, lr: float, beta1: float, beta2: float, weight_decay: float,
                 maximize: bool) -> tuple[float, ...]:
    """The kernel's scalars (order: _kernels.SCALARS['lion']); independent of the step."""
    return (-1.0 if maximize else 1.0, beta1, 1.0 - beta1, beta2, 1.0 - beta2, lr,
            1.0 - lr * weight_decay, 1.0 if weight_decay != 0.0 else 0.0)


LION_SPEC = OptSpec(
    "lion", LionHyper, lion_scalars, pairs={"betas": ("beta1", "beta2")},
    state=(Slot("exp_avg", "exp_avgs"),),
    doc="Fused Lion step over lists (see :class:`fusedoptim.Lion` for the rule).")

#: Validate Lion hyperparameters (LionHyper's fields, in order); return them canonical.
check_lion = LION_SPEC.check


class Lion(Optimizer):
    r"""Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms").

    For each param, with g the gradient (negated when ``maximize``)::

        c = beta1 * m + (1 - beta1) * g
        p = p * (1 - lr * weight_decay)           (decoupled weight decay)
        p = p - lr * sign(c)
        m = beta2 * m + (1 - beta2) * g

    which is the paper's ``p -= lr * (sign(c) + weight_decay * p)`` with the decay applied
    first, as in the authors' code. sign(0) = 0: an element whose interpolation c is zero
    does not move (apart from the decay); a NaN c gives a NaN param. Use an lr 3-10x smaller
    and a weight_decay 3-10x larger than for AdamW (the paper's advice).

    Args (the paper's names; not in torch.optim):
        params: list or dict of float32/float64 C-contiguous arrays, or param groups.
        lr (float): learning rate, default 1e-4, >= 0. May change between steps.
        betas (tuple): (beta1, beta2), default (0.9, 0.99), each in [0, 1).
        weight_decay (float): decoupled weight decay, default 0, >= 0.
        maximize (bool): default False; ascend instead of descend.
        skip_nonfinite (bool): default False; skip steps whose grads are not all
            finite (see :class:`fusedoptim.Optimizer`).
        **precision: ``master_weights``, ``state_dtype``, ``min_quantized_size``,
            ``rank1_normalization``, ``stochastic_rounding``, ``seed``: half-precision params,
            master weights and bfloat16/int8/int4 state (see :class:`fusedoptim.Optimizer`).

    State per param: ``step``, ``exp_avg`` (m).
    """


    spec = LION_SPEC

    def __init__(self, params: ParamsArg, lr: float = 1e-4,
                 betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0, *,
                 maximize: bool = False, skip_nonfinite: bool = False,
                 **precision: Unpack[PrecisionOptions]) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay,
                                      maximize=maximize),
                         skip_nonfinite=skip_nonfinite, **precision)
