"""AdaBelief: Adam with the belief in the observed gradient (kernel "adabelief")."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, NamedTuple

from .. import _validation as v
from .._spec import OptSpec, Slot
from ..optimizer import Optimizer

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .._precision import PrecisionOptions
    from .._typing import ParamsArg


class AdaBeliefHyper(NamedTuple):
    """AdaBelief's hyperparameters, validated (the functional call's, with its defaults)."""

    lr: Annotated[float, v.finite_nonneg]
    beta1: Annotated[float, v.unit_interval] = 0.9
    beta2: Annotated[float, v.unit_interval] = 0.999
    eps: Annotated[float, v.finite_nonneg] = 1e-16
    weight_decay: Annotated[float, v.finite_nonneg] = 0.0
    amsgrad: Annotated[bool, v.flag] = False
    weight_decouple: Annotated[bool, v.flag] = True
    fixed_decay: Annotated[bool, v.flag] = False
    rectify: Annotated[bool, v.flag] = True
    degenerated_to_sgd: Annotated[bool, v.flag] = True


def rectification(step: int, beta1: float, beta2: float,
                  degenerated_to_sgd: bool) -> tuple[float, float]:
    """adabelief-pytorch's (N_sma, step size without lr) for one step count, computed as
    there: sqrt(r_t-ish) / (1 - beta1^t) when N_sma >= 5, else 1 / (1 - beta1^t) when
    degenerated_to_sgd, else -1 (no param update)."""
    beta2_t = beta2 ** step
    n_sma_max = 2 / (1 - beta2) - 1
    n_sma = n_sma_max - 2 * step * beta2_t / (1 - beta2_t)
    if n_sma >= 5:
        step_size = math.sqrt(
            (1 - beta2_t) * (n_sma - 4) / (n_sma_max - 4) * (n_sma - 2) / n_sma * n_sma_max
            / (n_sma_max - 2)) / (1 - beta1 ** step)
    elif degenerated_to_sgd:
        step_size = 1.0 / (1 - beta1 ** step)
    else:
        step_size = -1.0
    return n_sma, step_size


def adabelief_scalars(step: int, lr: float, beta1: float, beta2: float, eps: float,
                      weight_decay: float, amsgrad: bool, weight_decouple: bool,
                      fixed_decay: bool, rectify: bool,
                      degenerated_to_sgd: bool) -> tuple[float, ...]:
    """The kernel's scalars for one step count (order: _kernels.SCALARS['adabelief']); the
    step's update (adaptive, SGD-style or none) is picked here, as adabelief-pytorch does."""
    mode = 0
    decay = 1.0                          # p *= 1 exactly without decoupled decay
    if weight_decay != 0.0:
        if weight_decouple:
            decay = 1.0 - weight_decay if fixed_decay else 1.0 - lr * weight_decay
        else:
            mode |= 1                    # L2
    if amsgrad:
        mode |= 2
    denom_scale, denom_add = 1.0, eps
    if not rectify:
        step_size = lr / (1 - beta1 ** step)
        denom_scale = 1.0 / math.sqrt(1 - beta2 ** step)
        if amsgrad:
            mode |= 4                    # the denominator takes the running max
    else:
        # the rectified step divides by s, not by the max, as there
        n_sma, rect = rectification(step, beta1, beta2, degenerated_to_sgd)
        step_size = rect * lr if rect > 0 else 0.0
        if n_sma < 5:                    # p -= step_size * m (step_size 0: no update)
            denom_scale, denom_add = 0.0, 1.0
    return (1.0, beta1, 1.0 - beta1, beta2, 1.0 - beta2, weight_decay, decay, eps, step_size,
            denom_scale, denom_add, float(mode))


ADABELIEF_SPEC = OptSpec(
    "adabelief", AdaBeliefHyper, adabelief_scalars, pairs={"betas": ("beta1", "beta2")},
    state=(Slot("exp_avg", "exp_avgs"), Slot("exp_avg_var", "exp_avg_vars"),
           Slot("max_exp_avg_var", "max_exp_avg_vars", used="amsgrad", check_unused=True)),
    doc="""Fused AdaBelief step over lists (see :class:`fusedoptim.AdaBelief` for the rule).

    ``max_exp_avg_vars`` may be None unless ``amsgrad``.""")

#: Validate AdaBelief hyperparameters (AdaBeliefHyper's fields, in order); return them canonical.
check_adabelief = ADABELIEF_SPEC.check


class AdaBelief(Optimizer):
    r"""AdaBelief (Zhuang et al., 2020, "AdaBelief Optimizer: Adapting Stepsizes by the Belief
    in Observed Gradients", NeurIPS 2020), as in the authors' ``adabelief-pytorch`` 0.2.1.

    For each param, with g the gradient and t the param's step::

        p  = p * (1 - lr * weight_decay)     (weight_decouple; 1 - weight_decay if fixed_decay)
        g  = g + weight_decay * p            (not weight_decouple: L2)
        m  = beta1 * m + (1 - beta1) * g                         exp_avg
        s  = beta2 * s + (1 - beta2) * (g - m)^2 + eps           exp_avg_var (stored with eps)
        s_max = max(s_max, s)                                    (amsgrad) max_exp_avg_var

    then, with rectify=False::

        p  = p - lr / (1 - beta1^t) * m / (sqrt(s') / sqrt(1 - beta2^t) + eps)

    where s' is s_max under amsgrad, else s; with rectify=True (RAdam's rectification, Liu
    et al. 2020), N_max = 2 / (1 - beta2) - 1 and N_t = N_max - 2 t beta2^t / (1 - beta2^t)::

        N_t >= 5:   p = p - lr r_t / (1 - beta1^t) * m / (sqrt(s) + eps),
                    r_t = sqrt((1 - beta2^t) (N_t - 4)(N_t - 2) N_max / ((N_max - 4) N_t (N_max - 2)))
        N_t < 5:    p = p - lr / (1 - beta1^t) * m       (degenerated_to_sgd; else p stays)

    eps enters twice, inside s and in the denominator. As in adabelief-pytorch, the rectified
    step uses s, not s_max, even under amsgrad (which still keeps s_max), and the decay and
    the moments update on every step, including those without a param update. The kernel
    multiplies by the precomputed ``1 / sqrt(1 - beta2^t)``, so float32 results differ from
    adabelief-pytorch's by rounding. Every step runs the one vectorised formula
    ``p * decay - step_size * m / (sqrt(s') * denom_scale + denom_add)``: an SGD-style step
    divides by ``sqrt(s) * 0 + 1``, a step without update has ``step_size = 0``. These agree
    with adabelief-pytorch's except in floating-point corners: there a non-finite m or s (from
    non-finite or overflowing grads) makes the param NaN where adabelief-pytorch keeps it, and
    a param of -0.0 may become +0.0.

    Differences from adabelief-pytorch: ``weight_decouple``, ``fixed_decay``, ``rectify`` and
    ``degenerated_to_sgd`` are per-group hyperparameters here (optimizer-wide there); the L2
    form does not write the decay into the caller's gradient (adabelief-pytorch adds it to
    ``p.grad`` in place); the step count is per param, as there; there is no
    ``print_change_log`` banner.

    Optax: ``optax.adabelief(learning_rate=lr, b1=beta1, b2=beta2, eps=eps, eps_root=eps)`` is
    this optimizer with ``rectify=False, amsgrad=False, weight_decay=0`` (Optax's eps_root is
    the eps added to s; its ``sqrt(s / (1 - beta2^t)) + eps`` is the same denominator up to
    rounding). Optax has no rectification, AMSGrad or weight decay in it: decoupled decay is
    ``optax.chain(optax.scale_by_belief(...), optax.add_decayed_weights(wd),
    optax.scale_by_learning_rate(lr))`` (``fixed_decay``: ``wd / lr`` there), L2 the same
    with ``add_decayed_weights`` first.

    Args (adabelief-pytorch's names and defaults):
        params: list or dict of float32/float64 C-contiguous arrays, or param groups.
        lr (float): learning rate, default 1e-3, >= 0. May change between steps.
        betas (tuple): (beta1, beta2), default (0.9, 0.999), each in [0, 1).
        eps (float): default 1e-16, >= 0; added to s and to the denominator.
        weight_decay (float): default 0, >= 0.
        amsgrad (bool): default False; keep the running max of s for the (unrectified)
            denominator.
        weight_decouple (bool): default True; decoupled decay as in AdamW, else L2.
        fixed_decay (bool): default False; with weight_decouple, decay by ``weight_decay``
            instead of ``lr * weight_decay``.
        rectify (bool): default True; RAdam's rectified step.
        degenerated_to_sgd (bool): default True; while N_t < 5, take the SGD-style step
            (else no param update).
        skip_nonfinite (bool): default False; skip steps whose grads are not all
            finite (see :class:`fusedoptim.Optimizer`).
        **precision: ``master_weights``, ``state_dtype``, ``stochastic_rounding``, ``seed``:
            half-precision params, master weights and bfloat16 state (see
            :class:`fusedoptim.Optimizer`).

    State per param: ``step``, ``exp_avg`` (m), ``exp_avg_var`` (s), ``max_exp_avg_var``
    (amsgrad).
    """

    spec = ADABELIEF_SPEC

    def __init__(self, params: ParamsArg, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-16,
                 weight_decay: float = 0.0, amsgrad: bool = False, weight_decouple: bool = True,
                 fixed_decay: bool = False, rectify: bool = True,
                 degenerated_to_sgd: bool = True, *, skip_nonfinite: bool = False,
                 **precision: Unpack[PrecisionOptions]) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, weight_decouple=weight_decouple,
                                      fixed_decay=fixed_decay, rectify=rectify,
                                      degenerated_to_sgd=degenerated_to_sgd),
                         skip_nonfinite=skip_nonfinite, **precision)
