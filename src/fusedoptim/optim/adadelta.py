"""Adadelta: one kernel ("adadelta")."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import _validation as v
from ..optimizer import Optimizer

if TYPE_CHECKING:
    from .._typing import ParamsArg

    #: check_adadelta's result: (lr, rho, eps, weight_decay, maximize)
    AdadeltaHyper = tuple[float, float, float, float, bool]

# Canonical hyperparameter tuple: the order adadelta_scalars and check_adadelta use.
_FIELDS = ("lr", "rho", "eps", "weight_decay", "maximize")


def check_adadelta(lr: object, rho: object, eps: object, weight_decay: object,
                   maximize: object) -> AdadeltaHyper:
    """Validate Adadelta hyperparameters; return them canonical (floats and bools)."""
    return (v.finite_nonneg(lr, "lr"), v.unit_closed(rho, "rho"), v.positive(eps, "eps"),
            v.finite_nonneg(weight_decay, "weight_decay"), v.flag(maximize, "maximize"))


def adadelta_scalars(step: int, lr: float, rho: float, eps: float, weight_decay: float,
                     maximize: bool) -> tuple[float, ...]:
    """The kernel's scalars (order: _kernels.SCALARS['adadelta']); step does not enter."""
    return (-1.0 if maximize else 1.0, weight_decay, rho, 1.0 - rho, eps, lr,
            1.0 if weight_decay != 0.0 else 0.0)


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

    State per param: ``square_avg`` (v), ``acc_delta`` (u) and ``step``.
    """

    _kernel = "adadelta"
    _slots = ("square_avg", "acc_delta")
    _hyper_keys = _FIELDS

    def __init__(self, params: ParamsArg, lr: float = 1.0, rho: float = 0.9, eps: float = 1e-6,
                 weight_decay: float = 0.0, *, maximize: bool = False,
                 skip_nonfinite: bool = False) -> None:
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay,
                                      maximize=maximize),
                         skip_nonfinite=skip_nonfinite)

    def _check_hyper(self, key: tuple[Any, ...]) -> AdadeltaHyper:
        return check_adadelta(*key)

    def _scalars(self, step: int, hyper: AdadeltaHyper) -> tuple[float, ...]:
        return adadelta_scalars(step, *hyper)

    def _functional_kwargs(self, hyper: AdadeltaHyper) -> dict[str, Any]:
        return dict(zip(_FIELDS, hyper))
