"""ASGD: averaged stochastic gradient descent (kernel "asgd")."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import _validation as v
from ..optimizer import Optimizer

if TYPE_CHECKING:
    from .._typing import ParamsArg

    #: check_asgd's result: (lr, lambd, alpha, t0, weight_decay, maximize)
    ASGDHyper = tuple[float, float, float, float, float, bool]

# Canonical hyperparameter tuple: the order asgd_scalars and check_asgd use.
_FIELDS = ("lr", "lambd", "alpha", "t0", "weight_decay", "maximize")


def check_asgd(lr: object, lambd: object, alpha: object, t0: object, weight_decay: object,
               maximize: object) -> ASGDHyper:
    """Validate ASGD hyperparameters; return them canonical (floats and bools)."""
    return (v.finite_nonneg(lr, "lr"), v.finite_nonneg(lambd, "lambd"),
            v.finite_nonneg(alpha, "alpha"), v.finite_nonneg(t0, "t0"),
            v.finite_nonneg(weight_decay, "weight_decay"), v.flag(maximize, "maximize"))


def asgd_scalars(step: int, mu: float, eta: float, lr: float, lambd: float, alpha: float,
                 t0: float, weight_decay: float,
                 maximize: bool) -> tuple[tuple[float, ...], tuple[float, float]]:
    """(kernel scalars, (next mu, next eta)) for one step count and the tensor's current mu
    and eta (left by its previous step), all in double."""
    mode = (1 if weight_decay != 0.0 else 0) | (2 if mu != 1.0 else 0)
    row = (-1.0 if maximize else 1.0, weight_decay, 1.0 - lambd * eta, eta, mu, float(mode))
    new_eta = lr / ((1.0 + lambd * lr * step) ** alpha)
    new_mu = 1.0 / max(1.0, step - t0)
    return row, (new_mu, new_eta)


class ASGD(Optimizer):
    r"""ASGD (Polyak & Juditsky, 1992, "Acceleration of Stochastic Approximation by
    Averaging").

    For each param, with g the gradient (negated when ``maximize``), t the step, and eta
    and mu as left by the previous step (eta starts at lr, mu at 1)::

        g   = g + weight_decay * p                   (L2 penalty)
        p   = p * (1 - lambd * eta)
        p   = p - eta * g
        ax  = ax + (p - ax) * mu     if mu != 1,  else  ax = p
        eta = lr / (1 + lambd * lr * t)^alpha        (for the next step)
        mu  = 1 / max(1, t - t0)

    ``ax`` is the averaged solution (read it from ``state[i]["ax"]``): it follows p until
    the mu set at step t - 1, 1 / max(1, t - 1 - t0), drops below 1, and is then the
    running mean of the iterates (for an integer t0, of steps t0 + 2 .. t). eta and mu are
    per-param state, floats here, kept and checkpointed as torch keeps them, and computed
    in double in Python; the kernel only gets scalars.

    Args (torch.optim.ASGD's names and defaults):
        params: list or dict of float32/float64 C-contiguous arrays, or param groups.
        lr (float): learning rate, default 1e-2, >= 0. Enters eta from the next step on.
        lambd (float): decay term, default 1e-4, >= 0.
        alpha (float): power for the eta schedule, default 0.75, >= 0.
        t0 (float): step after which averaging starts, default 1e6, >= 0.
        weight_decay (float): L2 penalty, default 0, >= 0.
        maximize (bool): default False; ascend instead of descend.
        skip_nonfinite (bool): default False; skip steps whose grads are not all
            finite (see :class:`fusedoptim.Optimizer`).

    State per param: ``step``, ``eta``, ``mu``, ``ax``.
    """

    _kernel = "asgd"
    _slots = ("ax",)
    _scalar_state = ("mu", "eta")   # the order of torch's functional asgd(..., mus, etas, ...)
    _hyper_keys = ("lr", "lambd", "alpha", "t0", "weight_decay", "maximize")

    def __init__(self, params: ParamsArg, lr: float = 1e-2, lambd: float = 1e-4,
                 alpha: float = 0.75, t0: float = 1e6, weight_decay: float = 0.0, *,
                 maximize: bool = False, skip_nonfinite: bool = False) -> None:
        super().__init__(params, dict(lr=lr, lambd=lambd, alpha=alpha, t0=t0,
                                      weight_decay=weight_decay, maximize=maximize),
                         skip_nonfinite=skip_nonfinite)

    def _check_hyper(self, key: tuple[Any, ...]) -> ASGDHyper:
        return check_asgd(*key)

    def _initial_state(self, name: str, hyper: ASGDHyper) -> float:
        return {"eta": hyper[0], "mu": 1.0}.get(name, 0.0)

    def _scalars_with_state(self, step: int, scalar_state: tuple[float, float], hyper: ASGDHyper
                            ) -> tuple[tuple[float, ...], tuple[float, float]]:
        # mypy maps a second *-unpacked fixed-length tuple onto the wrong parameters
        return asgd_scalars(step, *scalar_state, *hyper)  # type: ignore[arg-type]

    def _functional_kwargs(self, hyper: ASGDHyper) -> dict[str, Any]:
        return dict(zip(_FIELDS, hyper))
