"""Adagrad: one kernel ("adagrad")."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import _validation as v
from ..optimizer import Optimizer

if TYPE_CHECKING:
    from .._typing import ParamsArg

    #: check_adagrad's result: (lr, lr_decay, weight_decay, eps, maximize)
    AdagradStepHyper = tuple[float, float, float, float, bool]
    #: the class's: check_adagrad's plus initial_accumulator_value
    AdagradHyper = tuple[float, float, float, float, bool, float]

# Canonical hyperparameter tuple: the order adagrad_scalars and check_adagrad use.
_FIELDS = ("lr", "lr_decay", "weight_decay", "eps", "maximize")


def check_adagrad(lr: object, lr_decay: object, weight_decay: object, eps: object,
                  maximize: object) -> AdagradStepHyper:
    """Validate Adagrad's step hyperparameters; return them canonical."""
    return (v.finite_nonneg(lr, "lr"), v.finite_nonneg(lr_decay, "lr_decay"),
            v.finite_nonneg(weight_decay, "weight_decay"), v.positive(eps, "eps"),
            v.flag(maximize, "maximize"))


def adagrad_scalars(step: int, lr: float, lr_decay: float, weight_decay: float, eps: float,
                    maximize: bool) -> tuple[float, ...]:
    """The kernel's scalars for one step count (order: _kernels.SCALARS['adagrad'])."""
    clr = lr / (1.0 + (step - 1) * lr_decay)
    return (-1.0 if maximize else 1.0, weight_decay, clr, eps,
            1.0 if weight_decay != 0.0 else 0.0)


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

    State per param: ``sum`` (s) and ``step``.
    """

    _kernel = "adagrad"
    _slots = ("sum",)
    _hyper_keys = ("lr", "lr_decay", "weight_decay", "eps", "maximize",
                   "initial_accumulator_value")

    def __init__(self, params: ParamsArg, lr: float = 1e-2, lr_decay: float = 0.0,
                 weight_decay: float = 0.0, initial_accumulator_value: float = 0.0,
                 eps: float = 1e-10, *, maximize: bool = False,
                 skip_nonfinite: bool = False) -> None:
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value,
                                      eps=eps, maximize=maximize),
                         skip_nonfinite=skip_nonfinite)

    def _check_hyper(self, key: tuple[Any, ...]) -> AdagradHyper:
        *step_args, initial = key
        return check_adagrad(*step_args) + (
            v.finite_nonneg(initial, "initial_accumulator_value"),)

    def _initial_state(self, name: str, hyper: AdagradHyper) -> float:
        return hyper[5]             # the accumulator starts at initial_accumulator_value

    def _scalars(self, step: int, hyper: AdagradHyper) -> tuple[float, ...]:
        return adagrad_scalars(step, *hyper[:5])

    def _functional_kwargs(self, hyper: AdagradHyper) -> dict[str, Any]:
        return dict(zip(_FIELDS, hyper[:5]))
