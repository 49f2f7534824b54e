"""NAdam: Adam with Nesterov momentum and a momentum-decay schedule (kernel "nadam")."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, NamedTuple

from .. import _validation as v
from .._spec import OptSpec, ScalarSlot, Slot
from ..optimizer import Optimizer

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .._precision import PrecisionOptions
    from .._typing import ParamsArg


class NAdamHyper(NamedTuple):
    """NAdam's hyperparameters, validated (the functional call's, with its defaults)."""

    lr: Annotated[float, v.finite_nonneg]
    beta1: Annotated[float, v.unit_interval]
    beta2: Annotated[float, v.unit_interval]
    eps: Annotated[float, v.positive]
    weight_decay: Annotated[float, v.finite_nonneg] = 0.0
    momentum_decay: Annotated[float, v.finite_nonneg] = 4e-3
    decoupled_weight_decay: Annotated[bool, v.flag] = False
    maximize: Annotated[bool, v.flag] = False


def nadam_scalars(step: int, mu_product: float, lr: float, beta1: float, beta2: float,
                  eps: float, weight_decay: float, momentum_decay: float,
                  decoupled_weight_decay: bool,
                  maximize: bool) -> tuple[tuple[float, ...], tuple[float]]:
    """(kernel scalars, (next mu_product,)) for one step count and the tensor's mu_product
    (the product of mu_1 .. mu_{step-1}), all in double."""
    inv_bias_correction2 = 1.0 / (1.0 - beta2 ** step)
    mu = beta1 * (1.0 - 0.5 * 0.96 ** (step * momentum_decay))
    mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((step + 1) * momentum_decay))
    mu_product = mu_product * mu
    mu_product_next = mu_product * mu_next
    grad_coef = -lr * (1.0 - mu) / (1.0 - mu_product)
    avg_coef = -lr * mu_next / (1.0 - mu_product_next)
    mode = 0
    if weight_decay != 0.0:
        mode = 2 if decoupled_weight_decay else 1
    row = (-1.0 if maximize else 1.0, beta1, 1.0 - beta1, beta2, 1.0 - beta2, weight_decay,
           1.0 - lr * weight_decay, eps, inv_bias_correction2, grad_coef, avg_coef,
           float(mode))
    return row, (mu_product,)


NADAM_SPEC = OptSpec(
    "nadam", NAdamHyper, nadam_scalars, pairs={"betas": ("beta1", "beta2")},
    state=(Slot("exp_avg", "exp_avgs"), Slot("exp_avg_sq", "exp_avg_sqs")),
    scalar_state=(ScalarSlot("mu_product", "mu_products", init=1.0),),
    doc="""Fused NAdam step over lists (see :class:`fusedoptim.NAdam` for the rule).

    ``mu_products`` is a list of floats (1.0 before a param's first step), updated in place
    for every param that has a grad, like ``state_steps``.""")

#: Validate NAdam hyperparameters (NAdamHyper's fields, in order); return them canonical.
check_nadam = NADAM_SPEC.check


class NAdam(Optimizer):
    r"""NAdam (Dozat, 2016, "Incorporating Nesterov Momentum into Adam").

    For each param, with g the gradient (negated when ``maximize``) and t the step::

        g      = g + weight_decay * p        (L2; when decoupled_weight_decay: p *= 1 - lr*wd)
        mu_t   = beta1 * (1 - 0.5 * 0.96^(t * momentum_decay))
        mu_{t+1} likewise with t + 1;  mu_product = mu_1 * ... * mu_t
        m      = beta1 * m + (1 - beta1) * g
        v      = beta2 * v + (1 - beta2) * g * g
        denom  = sqrt(v / (1 - beta2^t)) + eps
        p      = p - (lr * (1 - mu_t) / (1 - mu_product) * g
                      + lr * mu_{t+1} / (1 - mu_product * mu_{t+1}) * m) / denom

    As in torch, ``mu_product`` is per-param state (a float here, in ``state`` and
    ``state_dict``), updated once per step of that param; mu_t, mu_{t+1} and the two
    coefficients are computed in double in Python, so the kernel only sees scalars. torch
    applies the g and m terms in two passes; here they share one division, which changes
    only the rounding.
    ``decoupled_weight_decay=True`` is NAdamW (decay as in AdamW, Loshchilov & Hutter 2019).

    Args (torch.optim.NAdam's names and defaults):
        params: list or dict of float32/float64 C-contiguous arrays, or param groups.
        lr (float): learning rate, default 2e-3, >= 0. May change between steps.
        betas (tuple): (beta1, beta2), default (0.9, 0.999), each in [0, 1).
        eps (float): default 1e-8, > 0.
        weight_decay (float): default 0, >= 0; coupled L2 unless decoupled_weight_decay.
        momentum_decay (float): psi in the mu schedule, default 4e-3, >= 0.
        decoupled_weight_decay (bool): default False.
        maximize (bool): default False; ascend instead of descend.
        skip_nonfinite (bool): default False; skip steps whose grads are not all
            finite (see :class:`fusedoptim.Optimizer`).
        **precision: ``master_weights``, ``state_dtype``, ``min_quantized_size``,
            ``rank1_normalization``, ``stochastic_rounding``, ``seed``: half-precision params,
            master weights and bfloat16/int8/int4 state (see :class:`fusedoptim.Optimizer`).

    State per param: ``step``, ``mu_product`` (starts at 1.0), ``exp_avg``, ``exp_avg_sq``.
    """


    spec = NADAM_SPEC

    def __init__(self, params: ParamsArg, lr: float = 2e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum_decay: float = 4e-3,
                 decoupled_weight_decay: bool = False, *, maximize: bool = False,
                 skip_nonfinite: bool = False,
                 **precision: Unpack[PrecisionOptions]) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      momentum_decay=momentum_decay,
                                      decoupled_weight_decay=decoupled_weight_decay,
                                      maximize=maximize),
                         skip_nonfinite=skip_nonfinite, **precision)
