"""Rprop: resilient backpropagation, per-element step sizes (kernel "rprop")."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import _validation as v
from ..optimizer import Optimizer

if TYPE_CHECKING:
    from .._typing import ParamsArg

    #: check_rprop's result: (etaminus, etaplus, step_size_min, step_size_max, maximize)
    RpropStepHyper = tuple[float, float, float, float, bool]
    #: the class's: lr (the initial step size), then check_rprop's
    RpropHyper = tuple[float, float, float, float, float, bool]

# The functional call's hyperparameters (torch's functional rprop takes no lr: the step
# sizes it starts from are state).
_FIELDS = ("etaminus", "etaplus", "step_size_min", "step_size_max", "maximize")


def check_rprop(etaminus: object, etaplus: object, step_size_min: object,
                step_size_max: object, maximize: object) -> RpropStepHyper:
    """Validate Rprop's step hyperparameters; return them canonical (floats and bools)."""
    etaminus = v.open_unit_interval(etaminus, "etas[0]")
    etaplus = v.finite_above(etaplus, "etas[1]", 1.0)
    lo, hi = v.ordered_pair((step_size_min, step_size_max), "step_sizes")
    return etaminus, etaplus, lo, hi, v.flag(maximize, "maximize")


def rprop_scalars(step: int, etaminus: float, etaplus: float, step_size_min: float,
                  step_size_max: float, maximize: bool) -> tuple[float, ...]:
    """The kernel's scalars (order: _kernels.SCALARS['rprop']); independent of the step."""
    return (-1.0 if maximize else 1.0, etaminus, etaplus, step_size_min, step_size_max)


class Rprop(Optimizer):
    r"""Rprop (Riedmiller & Braun, 1993, "A Direct Adaptive Method for Faster
    Backpropagation Learning: The RPROP Algorithm").

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

    State per param: ``step``, ``prev`` (g_prev), ``step_size`` (s).
    """

    _kernel = "rprop"
    _slots = ("prev", "step_size")
    _hyper_keys = ("lr", "etas", "step_sizes", "maximize")

    def __init__(self, params: ParamsArg, lr: float = 1e-2,
                 etas: tuple[float, float] = (0.5, 1.2),
                 step_sizes: tuple[float, float] = (1e-6, 50), *, maximize: bool = False,
                 skip_nonfinite: bool = False) -> None:
        super().__init__(params, dict(lr=lr, etas=etas, step_sizes=step_sizes,
                                      maximize=maximize),
                         skip_nonfinite=skip_nonfinite)

    def _check_hyper(self, key: tuple[Any, ...]) -> RpropHyper:
        lr, etas, step_sizes, maximize = key
        etaminus, etaplus = v.pair(etas, "etas")
        lo, hi = v.pair(step_sizes, "step_sizes")
        return (v.finite_nonneg(lr, "lr"),) + check_rprop(etaminus, etaplus, lo, hi, maximize)

    def _initial_state(self, name: str, hyper: RpropHyper) -> float:
        return hyper[0] if name == "step_size" else 0.0

    def _scalars(self, step: int, hyper: RpropHyper) -> tuple[float, ...]:
        return rprop_scalars(step, *hyper[1:])

    def _functional_kwargs(self, hyper: RpropHyper) -> dict[str, Any]:
        return dict(zip(_FIELDS, hyper[1:]))
