"""Rprop: resilient backpropagation, per-element step sizes (kernel "rprop")."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Annotated, NamedTuple

from .. import _validation as v
from .._spec import OptSpec, Slot
from ..optimizer import Optimizer

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .._precision import PrecisionOptions
    from .._typing import ParamsArg


class RpropHyper(NamedTuple):
    """Rprop's hyperparameters, validated: the functional call's (torch's functional rprop
    takes no lr: the step sizes it starts from are state), then the class's initial step
    size ``lr``."""

    step_size_min: Annotated[float, v.finite_nonneg]
    step_size_max: Annotated[float, v.finite_nonneg]
    etaminus: Annotated[float, v.open_unit_interval]
    etaplus: Annotated[float, partial(v.finite_above, bound=1.0)]
    maximize: Annotated[bool, v.flag] = False
    lr: Annotated[float, v.finite_nonneg] = 1e-2


def _ordered_step_sizes(hyper: RpropHyper, raw: RpropHyper) -> RpropHyper:
    if hyper.step_size_min > hyper.step_size_max:
        raise ValueError(f"step_sizes must be (min, max) with min <= max, got "
                         f"{(raw.step_size_min, raw.step_size_max)!r}")
    return hyper


def rprop_scalars(step: int, step_size_min: float, step_size_max: float, etaminus: float,
                  etaplus: float, maximize: bool) -> tuple[float, ...]:
    """The kernel's scalars (order: _kernels.SCALARS['rprop']); independent of the step."""
    return (-1.0 if maximize else 1.0, etaminus, etaplus, step_size_min, step_size_max)


RPROP_SPEC = OptSpec(
    "rprop", RpropHyper, rprop_scalars, class_only=("lr",), relate=_ordered_step_sizes,
    pairs={"step_sizes": ("step_size_min", "step_size_max"), "etas": ("etaminus", "etaplus")},
    state=(Slot("prev", "prevs"),
           Slot("step_size", "step_sizes", init="lr", hint="np.full_like(param, lr)")),
    doc="""Fused Rprop step over lists (see :class:`fusedoptim.Rprop` for the rule).

    As in torch, ``step_sizes`` are state: start them at the initial step size,
    ``np.full_like(param, lr)``; ``prevs`` start at zero.""")

#: Validate Rprop's step hyperparameters (RpropHyper's fields, in order); return them canonical.
check_rprop = RPROP_SPEC.check


class Rprop(Optimizer):
    r"""Rprop (Riedmiller & Braun, 1993, "A Direct Adaptive Method for Faster
    Backpropagation Learning: The RPROP_SPEC Algorithm").

    Each element has its own step size s, started at lr. With g the gradient (negated when
    ``maximize``) and g_prev the previous step's (zero at first)::

        if g * g_prev > 0:  s = min(s * etaplus, step_size_max)
        if g * g_prev < 0:  s = max(s * etaminus, step_size_min);  g = 0
        (g * g_prev == 0:   s unchanged, then clamped to [step_size_min, step_size_max])
        p      = p - sign(g) * s
        g_prev = g

    This is torch's variant (Rprop without weight backtracking): after a sign change the
    element does not move and forgets its gradient, so the next step counts as "no
    information". A NaN product gives a NaN step size, as in torch. lr is used only to
    initialise s when a param first steps; changing it later has no effect, as in torch.

    Args (torch.optim.Rprop's names and defaults):
        params: list or dict of float32/float64 C-contiguous arrays, or param groups.
        lr (float): initial step size, default 1e-2, >= 0.
        etas (tuple): (etaminus, etaplus), default (0.5, 1.2); 0 < etaminus < 1 < etaplus.
        step_sizes (tuple): (step_size_min, step_size_max), default (1e-6, 50);
            0 <= min <= max, finite.
        maximize (bool): default False; ascend instead of descend.
        skip_nonfinite (bool): default False; skip steps whose grads are not all
            finite (see :class:`fusedoptim.Optimizer`).
        **precision: ``master_weights``, ``state_dtype``, ``min_quantized_size``,
            ``rank1_normalization``, ``stochastic_rounding``, ``seed``: half-precision params,
            master weights and bfloat16/int8/int4 state (see :class:`fusedoptim.Optimizer`).

    State per param: ``step``, ``prev`` (g_prev), ``step_size`` (s).
    """


    spec = RPROP_SPEC

    def __init__(self, params: ParamsArg, lr: float = 1e-2,
                 etas: tuple[float, float] = (0.5, 1.2),
                 step_sizes: tuple[float, float] = (1e-6, 50), *, maximize: bool = False,
                 skip_nonfinite: bool = False,
                 **precision: Unpack[PrecisionOptions]) -> None:
        super().__init__(params, dict(lr=lr, etas=etas, step_sizes=step_sizes,
                                      maximize=maximize),
                         skip_nonfinite=skip_nonfinite, **precision)
