"""Lion: evolved sign momentum (kernel "lion"). torch.optim has no Lion."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import _validation as v
from ..optimizer import Optimizer

if TYPE_CHECKING:
    from .._typing import ParamsArg

    #: check_lion's result: (lr, beta1, beta2, weight_decay, maximize)
    LionHyper = tuple[float, float, float, float, bool]

# Canonical hyperparameter tuple: the order lion_scalars and check_lion use.
_FIELDS = ("lr", "beta1", "beta2", "weight_decay", "maximize")


def check_lion(lr: object, beta1: object, beta2: object, weight_decay: object,
               maximize: object) -> LionHyper:
    """Validate Lion hyperparameters; return them canonical (floats and bools)."""
    return (v.finite_nonneg(lr, "lr"), v.unit_interval(beta1, "betas[0]"),
            v.unit_interval(beta2, "betas[1]"), v.finite_nonneg(weight_decay, "weight_decay"),
            v.flag(maximize, "maximize"))


def lion_scalars(step: int, lr: float, beta1: float, beta2: float, weight_decay: float,
                 maximize: bool) -> tuple[float, ...]:
    """The kernel's scalars (order: _kernels.SCALARS['lion']); independent of the step."""
    return (-1.0 if maximize else 1.0, beta1, 1.0 - beta1, beta2, 1.0 - beta2, lr,
            1.0 - lr * weight_decay, 1.0 if weight_decay != 0.0 else 0.0)


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

    State per param: ``step``, ``exp_avg`` (m).
    """

    _kernel = "lion"
    _slots = ("exp_avg",)
    _hyper_keys = ("lr", "betas", "weight_decay", "maximize")

    def __init__(self, params: ParamsArg, lr: float = 1e-4,
                 betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0, *,
                 maximize: bool = False, skip_nonfinite: bool = False) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay,
                                      maximize=maximize),
                         skip_nonfinite=skip_nonfinite)

    def _check_hyper(self, key: tuple[Any, ...]) -> LionHyper:
        lr, betas, wd, maximize = key
        b1, b2 = v.pair(betas, "betas")
        return check_lion(lr, b1, b2, wd, maximize)

    def _scalars(self, step: int, hyper: LionHyper) -> tuple[float, ...]:
        return lion_scalars(step, *hyper)

    def _functional_kwargs(self, hyper: LionHyper) -> dict[str, Any]:
        return dict(zip(_FIELDS, hyper))
