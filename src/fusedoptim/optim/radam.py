"""RAdam: Adam with a rectified adaptive learning rate (kernel "radam")."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .. import _validation as v
from ..optimizer import Optimizer

if TYPE_CHECKING:
    from .._typing import ParamsArg

    #: check_radam's result: (lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay,
    #: maximize)
    RAdamHyper = tuple[float, float, float, float, float, bool, bool]

# Canonical hyperparameter tuple: the order radam_scalars and check_radam use.
_FIELDS = ("lr", "beta1", "beta2", "eps", "weight_decay", "decoupled_weight_decay",
           "maximize")


def check_radam(lr: object, beta1: object, beta2: object, eps: object, weight_decay: object,
                decoupled_weight_decay: object, maximize: object) -> RAdamHyper:
    """Validate RAdam hyperparameters; return them canonical (floats and bools)."""
    return (v.finite_nonneg(lr, "lr"), v.unit_interval(beta1, "betas[0]"),
            v.unit_interval(beta2, "betas[1]"), v.positive(eps, "eps"),
            v.finite_nonneg(weight_decay, "weight_decay"),
            v.flag(decoupled_weight_decay, "decoupled_weight_decay"),
            v.flag(maximize, "maximize"))


def radam_scalars(step: int, lr: float, beta1: float, beta2: float, eps: float,
                  weight_decay: float, decoupled_weight_decay: bool,
                  maximize: bool) -> tuple[float, ...]:
    """The kernel's scalars for one step count (order: _kernels.SCALARS['radam']). The
    rho_t > 5 test picks the rectified or the plain momentum update for this step."""
    bias_correction1 = 1.0 - beta1 ** step
    bias_correction2 = 1.0 - beta2 ** step
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    rho_t = rho_inf - 2.0 * step * beta2 ** step / bias_correction2
    mode = 0
    if weight_decay != 0.0:
        mode = 2 if decoupled_weight_decay else 1
    if rho_t > 5.0:
        rect = math.sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                         / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
        step_size = lr * rect * math.sqrt(bias_correction2) / bias_correction1
        mode |= 4
    else:
        step_size = lr / bias_correction1
    return (-1.0 if maximize else 1.0, beta1, 1.0 - beta1, beta2, 1.0 - beta2, weight_decay,
            1.0 - lr * weight_decay, eps, step_size, float(mode))


class RAdam(Optimizer):
    r"""RAdam (Liu et al., 2020, "On the Variance of the Adaptive Learning Rate and Beyond").

    For each param, with g the gradient (negated when ``maximize``) and t the step::

        g      = g + weight_decay * p        (L2; when decoupled_weight_decay: p *= 1 - lr*wd)
        m      = beta1 * m + (1 - beta1) * g
        v      = beta2 * v + (1 - beta2) * g * g
        rho_inf = 2 / (1 - beta2) - 1
        rho_t  = rho_inf - 2 t beta2^t / (1 - beta2^t)
        if rho_t > 5:
            r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
            p   = p - lr r_t sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + eps)
        else:
            p   = p - lr / (1 - beta1^t) * m          (un-rectified; v is still updated)

    The branch is chosen per step (and per param step count) in Python; the kernel gets a
    flag and one folded step size. eps is added to sqrt(v) before the bias correction, as
    in torch.

    Args (torch.optim.RAdam's names and defaults):
        params: list or dict of float32/float64 C-contiguous arrays, or param groups.
        lr (float): learning rate, default 1e-3, >= 0. May change between steps.
        betas (tuple): (beta1, beta2), default (0.9, 0.999), each in [0, 1).
        eps (float): default 1e-8, > 0.
        weight_decay (float): default 0, >= 0; coupled L2 unless decoupled_weight_decay.
        decoupled_weight_decay (bool): default False (True: decay as in AdamW).
        maximize (bool): default False; ascend instead of descend.
        skip_nonfinite (bool): default False; skip steps whose grads are not all
            finite (see :class:`fusedoptim.Optimizer`).

    State per param: ``step``, ``exp_avg``, ``exp_avg_sq``.
    """

    _kernel = "radam"
    _slots = ("exp_avg", "exp_avg_sq")
    _hyper_keys = ("lr", "betas", "eps", "weight_decay", "decoupled_weight_decay", "maximize")

    def __init__(self, params: ParamsArg, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decoupled_weight_decay: bool = False, *,
                 maximize: bool = False, skip_nonfinite: bool = False) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      decoupled_weight_decay=decoupled_weight_decay,
                                      maximize=maximize),
                         skip_nonfinite=skip_nonfinite)

    def _check_hyper(self, key: tuple[Any, ...]) -> RAdamHyper:
        lr, betas, eps, wd, decoupled, maximize = key
        b1, b2 = v.pair(betas, "betas")
        return check_radam(lr, b1, b2, eps, wd, decoupled, maximize)

    def _scalars(self, step: int, hyper: RAdamHyper) -> tuple[float, ...]:
        return radam_scalars(step, *hyper)

    def _functional_kwargs(self, hyper: RAdamHyper) -> dict[str, Any]:
        return dict(zip(_FIELDS, hyper))
