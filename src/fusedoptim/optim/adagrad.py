"""Adagrad: one kernel ("adagrad")."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, NamedTuple

from .. import _validation as v
from .._spec import OptSpec, Slot
from ..optimizer import Optimizer

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .._precision import PrecisionOptions
    from .._typing import ParamsArg


class AdagradHyper(NamedTuple):
    """Adagrad's hyperparameters, validated: the functional call's (with its defaults), then
    the class's initial_accumulator_value (the functional call's state_sums start there)."""

    lr: Annotated[float, v.finite_nonneg]
    lr_decay: Annotated[float, v.finite_nonneg] = 0.0
    weight_decay: Annotated[float, v.finite_nonneg] = 0.0
    eps: Annotated[float, v.positive] = 1e-10
    maximize: Annotated[bool, v.flag] = False
    initial_accumulator_value: Annotated[float, v.finite_nonneg] = 0.0


def adagrad_scalars(step: int, lr: float, lr_decay: float, weight_decay: float, eps: float,
                    maximize: bool) -> tuple[float, ...]:
    """The kernel's scalars for one step count (order: _kernels.SCALARS['adagrad'])."""
    clr = lr / (1.0 + (step - 1) * lr_decay)
    return (-1.0 if maximize else 1.0, weight_decay, clr, eps,
            1.0 if weight_decay != 0.0 else 0.0)


ADAGRAD_SPEC = OptSpec(
    "adagrad", AdagradHyper, adagrad_scalars, class_only=("initial_accumulator_value",),
    # the accumulator starts at initial_accumulator_value
    state=(Slot("sum", "state_sums", init="initial_accumulator_value"),),
    doc="""Fused Adagrad step over lists (see :class:`fusedoptim.Adagrad` for the rule).

    ``state_sums`` start at initial_accumulator_value (e.g. ``np.full_like(p, 0.1)``).""")

#: Validate Adagrad's step hyperparameters (AdagradHyper's fields but the last, in order);
#: return them canonical.
check_adagrad = ADAGRAD_SPEC.check


class Adagrad(Optimizer):
    r"""Adagrad (Duchi, Hazan & Singer, 2011, "Adaptive Subgradient Methods for Online
    Learning and Stochastic Optimization").

    For each param, with g the gradient (negated when ``maximize``) and t the step::

        g   = g + weight_decay * p                  (L2, when weight_decay != 0)
        clr = lr / (1 + (t - 1) * lr_decay)
        s   = s + g * g                             (s starts at initial_accumulator_value)
        p   = p - clr * g / (sqrt(s) + eps)

    Args (torch.optim.Adagrad's names and defaults):
        params: list or dict of float32/float64 C-contiguous arrays, or param groups.
        lr (float): learning rate, default 1e-2, finite >= 0.
        lr_decay (float): default 0, finite >= 0.
        weight_decay (float): default 0, finite >= 0.
        initial_accumulator_value (float): default 0, finite >= 0; the starting value of s.
            A param's s is created at its first gradient, from its group's value then.
        eps (float): default 1e-10, > 0.
        maximize (bool): default False; ascend instead of descend.
        skip_nonfinite (bool): default False; skip steps whose grads are not all
            finite (see :class:`fusedoptim.Optimizer`).
        **precision: ``master_weights``, ``state_dtype``, ``min_quantized_size``,
            ``rank1_normalization``, ``stochastic_rounding``, ``seed``: half-precision params,
            master weights and bfloat16/int8/int4 state (see :class:`fusedoptim.Optimizer`).

    State per param: ``sum`` (s) and ``step``.
    """


    spec = ADAGRAD_SPEC

    def __init__(self, params: ParamsArg, lr: float = 1e-2, lr_decay: float = 0.0,
                 weight_decay: float = 0.0, initial_accumulator_value: float = 0.0,
                 eps: float = 1e-10, *, maximize: bool = False,
                 skip_nonfinite: bool = False,
                 **precision: Unpack[PrecisionOptions]) -> None:
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value,
                                      eps=eps, maximize=maximize),
                         skip_nonfinite=skip_nonfinite, **precision)
