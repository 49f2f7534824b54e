"""RMSprop (plain, centered, momentum) and the notes' bias-corrected RMSProp: one kernel."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, NamedTuple

from .. import _validation as v
from .._spec import OptSpec, Slot
from ..optimizer import Optimizer

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .._precision import PrecisionOptions
    from .._typing import ParamsArg


class RMSpropHyper(NamedTuple):
    """RMSprop's hyperparameters, validated (the functional call's, with its defaults)."""

    lr: Annotated[float, v.finite_nonneg]
    alpha: Annotated[float, v.unit_interval]
    eps: Annotated[float, v.positive]
    weight_decay: Annotated[float, v.finite_nonneg] = 0.0
    momentum: Annotated[float, v.finite_nonneg] = 0.0
    centered: Annotated[bool, v.flag] = False
    maximize: Annotated[bool, v.flag] = False
    bias_correction: Annotated[bool, v.flag] = False


def _rmsprop_relations(hyper: RMSpropHyper, raw: RMSpropHyper) -> RMSpropHyper:
    if hyper.centered and hyper.bias_correction:
        raise ValueError(f"bias_correction=True is the notes' (uncentered) RMSProp and cannot "
                         f"be combined with centered={raw.centered!r}: the bias-corrected "
                         f"variance of the first gradient is 0, so the first step would be "
                         f"lr*g/eps; use one or the other")
    return hyper


def rmsprop_scalars(step: int, lr: float, alpha: float, eps: float, weight_decay: float,
                    momentum: float, centered: bool, maximize: bool,
                    bias_correction: bool) -> tuple[float, ...]:
    """The kernel's scalars for one step count (order: _kernels.SCALARS['rmsprop'])."""
    mode = 1 if weight_decay != 0.0 else 0
    if centered:
        mode |= 2
    if momentum > 0.0:
        mode |= 4
    bc = 1.0
    if bias_correction:
        mode |= 8
        bc = 1.0 - alpha ** step
    return (-1.0 if maximize else 1.0, weight_decay, alpha, 1.0 - alpha, eps, lr, momentum,
            bc, float(mode))


RMSPROP_SPEC = OptSpec(
    "rmsprop", RMSpropHyper, rmsprop_scalars, relate=_rmsprop_relations,
    state=(Slot("square_avg", "square_avgs"), Slot("grad_avg", "grad_avgs", used="centered"),
           Slot("momentum_buffer", "momentum_buffer_list", used="momentum")),
    doc="""Fused RMSprop step over lists (see :class:`fusedoptim.RMSprop` for the rule).

    ``grad_avgs`` is used only when centered, ``momentum_buffer_list`` only when
    momentum > 0; either may be None otherwise.""")

#: Validate RMSprop hyperparameters (RMSpropHyper's fields, in order); return them canonical.
check_rmsprop = RMSPROP_SPEC.check


class RMSprop(Optimizer):
    r"""RMSprop (Hinton, 2012, "Neural Networks for Machine Learning", lecture 6e; centered
    form: Graves, 2013, "Generating Sequences With Recurrent Neural Networks").

    For each param, with g the gradient (negated when ``maximize``) and t the step::

        g   = g + weight_decay * p                   (L2, when weight_decay != 0)
        v   = alpha * v + (1 - alpha) * g * g
        a   = a + (1 - alpha) * (g - a)              (centered: running mean of g)
        var = v - a * a         if centered   else   v
        avg = sqrt(var) + eps
        b   = momentum * b + g / avg;   p = p - lr * b     (momentum > 0)
        p   = p - lr * g / avg                             (momentum == 0)

    ``bias_correction=True`` is the notes' RMSProp: v starts at 0, so before use it is
    divided by c = 1 - alpha^t, as in Adam: var = v_hat = v / c (the buffer keeps the raw
    average). It cannot be combined with ``centered``: the bias-corrected variance of a
    single gradient is 0, which would make the first step lr * g / eps. The default (False)
    is torch's RMSprop.

    Args (torch.optim.RMSprop's names and defaults):
        params: list or dict of float32/float64 C-contiguous arrays, or param groups.
        lr (float): learning rate, default 1e-2, finite >= 0.
        alpha (float): smoothing constant, default 0.99, in [0, 1).
        eps (float): default 1e-8, > 0.
        weight_decay (float): default 0, finite >= 0.
        momentum (float): default 0, finite >= 0.
        centered (bool): default False; normalise by the estimated variance of g.
        maximize (bool): default False; ascend instead of descend.
        bias_correction (bool): default False; True is the notes' variant (not in torch,
            not with centered).
        skip_nonfinite (bool): default False; skip steps whose grads are not all
            finite (see :class:`fusedoptim.Optimizer`).
        **precision: ``master_weights``, ``state_dtype``, ``min_quantized_size``,
            ``rank1_normalization``, ``stochastic_rounding``, ``seed``: half-precision params,
            master weights and bfloat16/int8/int4 state (see :class:`fusedoptim.Optimizer`).

    State per param: ``square_avg`` (v), ``grad_avg`` (a, centered only), ``momentum_buffer``
    (b, momentum > 0 only) and ``step``.
    """


    spec = RMSPROP_SPEC

    def __init__(self, params: ParamsArg, lr: float = 1e-2, alpha: float = 0.99,
                 eps: float = 1e-8, weight_decay: float = 0.0, momentum: float = 0.0,
                 centered: bool = False, *, maximize: bool = False,
                 bias_correction: bool = False, skip_nonfinite: bool = False,
                 **precision: Unpack[PrecisionOptions]) -> None:
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered, maximize=maximize,
                                      bias_correction=bias_correction),
                         skip_nonfinite=skip_nonfinite, **precision)
