"""signSGD and Signum: a step of lr in the direction of the sign of the gradient, or of its
momentum buffer (kernel "signsgd")."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, NamedTuple

from .. import _validation as v
from .._spec import OptSpec, Slot
from ..optimizer import Optimizer

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .._precision import PrecisionOptions
    from .._typing import ParamsArg


class SignSGDHyper(NamedTuple):
    """SignSGD's hyperparameters, validated (the functional call's, with its defaults)."""

    lr: Annotated[float, v.finite_nonneg]
    momentum: Annotated[float, v.unit_interval] = 0.0
    dampening: Annotated[float, v.unit_closed] = 0.0
    weight_decay: Annotated[float, v.finite_nonneg] = 0.0
    maximize: Annotated[bool, v.flag] = False


def signsgd_scalars(step: int, lr: float, momentum: float, dampening: float,
                    weight_decay: float, maximize: bool,
                    fresh: bool = False) -> tuple[float, ...]:
    """The kernel's scalars (order: _kernels.SCALARS['signsgd']). `fresh` marks the first
    update of a new momentum buffer, which starts at the gradient itself."""
    mode = 1 if weight_decay != 0.0 else 0
    if momentum != 0.0:
        mode |= 2
        if fresh:
            mode |= 4
    return (-1.0 if maximize else 1.0, lr, weight_decay, momentum, 1.0 - dampening,
            float(mode))


SIGNSGD_SPEC = OptSpec(
    "signsgd", SignSGDHyper, signsgd_scalars,
    # Like torch's SGD, a new momentum buffer starts at the gradient (fresh).
    state=(Slot("momentum_buffer", "momentum_buffer_list", used="momentum", fresh=True),),
    doc="""Fused signSGD / Signum step over lists (see :class:`fusedoptim.SignSGD` for the
    rule). When momentum != 0, ``momentum_buffer_list`` holds an array or None per param; a
    None entry of a param with a grad is created here, starting at the gradient.""")

#: Validate SignSGD hyperparameters (SignSGDHyper's fields, in order); return them canonical.
check_signsgd = SIGNSGD_SPEC.check


class SignSGD(Optimizer):
    r"""signSGD and Signum (Bernstein, Wang, Azizzadenesheli & Anandkumar, 2018, "signSGD:
    Compressed Optimisation for Non-Convex Problems", Algorithms 1 and 3).

    For each param, with g the gradient (negated when ``maximize``) and mu = momentum::

        g = g + weight_decay * p                 (L2, when weight_decay != 0)

        momentum == 0 (signSGD):   p = p - lr * sign(g)

        momentum > 0 (Signum), with torch's momentum buffer:
            b = g                                (first step: the buffer starts at g)
            b = mu * b + (1 - dampening) * g     (later steps)
            p = p - lr * sign(b)

    sign(0) = 0, so an element whose direction is exactly zero does not move. The paper's
    Signum keeps an exponential moving average, m = mu * m + (1 - mu) * g: that is
    ``dampening=momentum`` here, with the buffer started at the first gradient as in the
    authors' PyTorch release (a scale, which sign() ignores, is all that the start changes
    on the first step). The default ``dampening=0`` is torch's SGD buffer, b = mu * b + g.

    Optax: ``optax.chain(optax.add_decayed_weights(weight_decay), optax.trace(decay=mu),
    optax.scale_by_sign(), optax.scale(-lr))`` is signSGD/Signum with dampening=0
    (``optax.trace`` starts its buffer at 0, which only rescales the first buffer).

    Args:
        params: list or dict of float32/float64 C-contiguous arrays, or param groups.
        lr (float): step size, default 1e-3, finite >= 0. May change between steps.
        momentum (float): default 0 (signSGD), in [0, 1) (Signum).
        dampening (float): default 0, in [0, 1]; set it to momentum for the paper's EMA.
        weight_decay (float): default 0, finite >= 0; L2 penalty added to the gradient.
        maximize (bool): default False; ascend instead of descend.
        skip_nonfinite (bool): default False; skip steps whose grads are not all
            finite (see :class:`fusedoptim.Optimizer`).
        **precision: ``master_weights``, ``state_dtype``, ``min_quantized_size``,
            ``rank1_normalization``, ``stochastic_rounding``, ``seed``: half-precision params,
            master weights and bfloat16/int8/int4 state (see :class:`fusedoptim.Optimizer`).

    State per param: ``momentum_buffer`` (only when momentum != 0) and ``step``.
    """

    spec = SIGNSGD_SPEC

    def __init__(self, params: ParamsArg, lr: float = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, *,
                 maximize: bool = False, skip_nonfinite: bool = False,
                 **precision: Unpack[PrecisionOptions]) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, maximize=maximize),
                         skip_nonfinite=skip_nonfinite, **precision)
