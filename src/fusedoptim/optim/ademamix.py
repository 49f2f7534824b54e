"""AdEMAMix: a fast and a slow EMA of the gradient over Adam's denominator (kernel "ademamix").
torch.optim has no AdEMAMix; bitsandbytes' ``bnb.optim.AdEMAMix`` is the release followed."""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING, Annotated, NamedTuple

from .. import _validation as v
from .._spec import OptSpec, Slot
from ..optimizer import Optimizer

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .._precision import PrecisionOptions
    from .._typing import ParamsArg


def warmup_steps(value: object, name: str) -> int | None:
    """t_alpha, t_beta3: None (no warm-up) or a positive number of steps."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be None (no warm-up) or a positive integer number of "
                         f"steps, got {value!r}")
    return int(value)


class AdEMAMixHyper(NamedTuple):
    """AdEMAMix's hyperparameters, validated (the functional call's, with its defaults)."""

    lr: Annotated[float, v.finite_nonneg]
    beta1: Annotated[float, v.unit_interval]
    beta2: Annotated[float, v.unit_interval]
    beta3: Annotated[float, v.unit_interval]
    alpha: Annotated[float, v.finite_nonneg] = 5.0
    t_alpha: Annotated[int | None, warmup_steps] = None
    t_beta3: Annotated[int | None, warmup_steps] = None
    eps: Annotated[float, v.positive] = 1e-8
    weight_decay: Annotated[float, v.finite_nonneg] = 1e-2
    maximize: Annotated[bool, v.flag] = False


def _ademamix_relations(hyper: AdEMAMixHyper, raw: AdEMAMixHyper) -> AdEMAMixHyper:
    if hyper.t_beta3 is not None and not 0.0 < hyper.beta1 <= hyper.beta3:
        raise ValueError(
            f"t_beta3={raw.t_beta3!r} warms beta3 up from betas[0] to betas[2] through "
            f"ln(beta1) ln(beta3) / ((1 - s) ln(beta3) + s ln(beta1)), which needs "
            f"0 < betas[0] <= betas[2]; got betas[0]={raw.beta1!r}, betas[2]={raw.beta3!r}: "
            f"raise betas[2] (or lower betas[0] above 0), or set t_beta3=None")
    return hyper


def scheduled_alpha(step: int, alpha: float, t_alpha: int | None) -> float:
    """The alpha warm-up (bitsandbytes' formula): linear from 0 to alpha over t_alpha steps."""
    if t_alpha is None:
        return alpha
    return min(step * alpha / t_alpha, alpha)


def scheduled_beta3(step: int, beta1: float, beta3: float, t_beta3: int | None) -> float:
    """The beta3 warm-up (bitsandbytes' formula, the paper's f_beta3): from beta1 at step 0
    to beta3 at step t_beta3, linear in 1 / ln(beta), capped at beta3."""
    if t_beta3 is None:
        return beta3
    ln_beta1, ln_beta3 = math.log(beta1), math.log(beta3)
    s = step / t_beta3
    return min(math.exp((ln_beta1 * ln_beta3) / (((1 - s) * ln_beta3) + (s * ln_beta1))),
               beta3)


def ademamix_scalars(step: int, lr: float, beta1: float, beta2: float, beta3: float,
                     alpha: float, t_alpha: int | None, t_beta3: int | None, eps: float,
                     weight_decay: float, maximize: bool) -> tuple[float, ...]:
    """The kernel's scalars for one step count (order: _kernels.SCALARS['ademamix'])."""
    alpha_t = scheduled_alpha(step, alpha, t_alpha)
    beta3_t = scheduled_beta3(step, beta1, beta3, t_beta3)
    inv_bias_correction1 = 1.0 / (1.0 - beta1 ** step)
    inv_bias_correction2_sqrt = 1.0 / math.sqrt(1.0 - beta2 ** step)
    return (-1.0 if maximize else 1.0, beta1, 1.0 - beta1, beta2, 1.0 - beta2, beta3_t,
            1.0 - beta3_t, alpha_t, lr, 1.0 - lr * weight_decay, inv_bias_correction1,
            inv_bias_correction2_sqrt, eps, 1.0 if weight_decay > 0.0 else 0.0)


ADEMAMIX_SPEC = OptSpec(
    "ademamix", AdEMAMixHyper, ademamix_scalars,
    pairs={"betas": ("beta1", "beta2", "beta3")}, relate=_ademamix_relations,
    state=(Slot("exp_avg", "exp_avgs"), Slot("exp_avg_slow", "exp_avg_slows"),
           Slot("exp_avg_sq", "exp_avg_sqs")),
    doc="""Fused AdEMAMix step over lists (see :class:`fusedoptim.AdEMAMix` for the rule).

    ``exp_avgs`` are the fast EMAs (m1), ``exp_avg_slows`` the slow ones (m2),
    ``exp_avg_sqs`` the second moments (nu); ``state_steps`` drive the bias corrections and
    the alpha and beta3 warm-ups.""")

#: Validate AdEMAMix hyperparameters (AdEMAMixHyper's fields, in order); return them canonical.
check_ademamix = ADEMAMIX_SPEC.check


class AdEMAMix(Optimizer):
    r"""AdEMAMix (Pagliardini, Ablin & Grangier, 2024, "The AdEMAMix Optimizer: Better,
    Faster, Older", arXiv:2409.03137), with bitsandbytes' semantics (``bnb.optim.AdEMAMix``,
    0.50.2).

    For each param, with g the gradient (negated when ``maximize``) and t the step::

        s       = t / t_beta3
        alpha_t = min(t * alpha / t_alpha, alpha)             (alpha when t_alpha is None)
        beta3_t = min(exp(ln(b1) ln(b3) / ((1 - s) ln(b3) + s ln(b1))), b3)
                                                              (b3 when t_beta3 is None)
        m1 = b1 * m1 + (1 - b1) * g                           (fast EMA)
        m2 = beta3_t * m2 + (1 - beta3_t) * g                 (slow EMA, not bias-corrected)
        nu = b2 * nu + (1 - b2) * g * g
        p  = p * (1 - lr * weight_decay)                      (decoupled, if weight_decay > 0)
        p  = p - lr * (m1 / (1 - b1^t) + alpha_t * m2) / (sqrt(nu) / sqrt(1 - b2^t) + eps)

    The warm-ups are the paper's schedulers: alpha grows linearly from 0 over ``t_alpha``
    steps; beta3 starts at beta1 and reaches beta3 at step ``t_beta3`` (linear in
    1/ln(beta)), so the slow EMA does not dominate an early update. Both formulas are
    bitsandbytes', evaluated in double once per step. The bias corrections are applied as
    reciprocals (``m1 * (1 / (1 - b1^t))``), which rounds within an ulp of bitsandbytes'
    division. With ``alpha=0`` the step is AdamW.

    Differences from ``bnb.optim.AdEMAMix``: ``maximize`` is added; ``eps`` must be > 0 (bnb
    accepts 0, which divides 0 by 0 for a zero gradient); ``t_alpha``/``t_beta3`` must be
    None or >= 1 (bnb treats 0 as None); with ``t_beta3`` set, ``0 < betas[0] <= betas[2]``
    is required (bnb's formula takes log(0) for betas[0] = 0 and overflows for betas[0] >
    betas[2]). ``state_dtype="int8"`` is bnb's ``AdEMAMix8bit``: the two EMAs with the
    signed dynamic map, nu with the unsigned one, blocks of 256 (``int4``: blocks of 128).

    Optax: ``optax.contrib.ademamix(lr, b1=beta1, b2=beta2, b3=beta3, alpha=alpha, eps=eps,
    eps_root=0.0, weight_decay=weight_decay)`` is the same rule (it takes sqrt(nu / (1 -
    b2^t)) and adds ``weight_decay * p`` to the update: equal in exact arithmetic). Its
    ``b3`` and ``alpha`` may be schedules of its 0-based count, so the warm-ups are
    ``b3=lambda c: scheduled_beta3(c + 1, beta1, beta3, t_beta3)`` and ``alpha=lambda c:
    scheduled_alpha(c + 1, alpha, t_alpha)`` (``fusedoptim.optim.ademamix``). Note Optax's
    ``scale_by_ademamix`` defaults ``alpha=6.0``, its ``ademamix`` 5.0.

    Args (bitsandbytes' names and defaults):
        params: list or dict of float32/float64 C-contiguous arrays, or param groups.
        lr (float): learning rate, default 1e-3, >= 0. May change between steps.
        betas (tuple): (beta1, beta2, beta3), default (0.9, 0.999, 0.9999), each in [0, 1):
            the fast EMA's, the second moment's and the slow EMA's decay.
        alpha (float): weight of the slow EMA, default 5.0, >= 0.
        t_alpha (int or None): steps of the alpha warm-up, default None (no warm-up).
        t_beta3 (int or None): steps of the beta3 warm-up, default None (no warm-up).
        eps (float): default 1e-8, > 0, added to the bias-corrected sqrt(nu).
        weight_decay (float): decoupled weight decay, default 0.01, >= 0.
        maximize (bool): default False; ascend instead of descend (not in bitsandbytes).
        skip_nonfinite (bool): default False; skip steps whose grads are not all
            finite (see :class:`fusedoptim.Optimizer`).
        **precision: ``master_weights``, ``state_dtype``, ``min_quantized_size``,
            ``rank1_normalization``, ``stochastic_rounding``, ``seed``: half-precision params,
            master weights and bfloat16/int8/int4 state (see :class:`fusedoptim.Optimizer`).

    State per param: ``step``, ``exp_avg`` (m1), ``exp_avg_slow`` (m2), ``exp_avg_sq`` (nu).
    """

    spec = ADEMAMIX_SPEC

    def __init__(self, params: ParamsArg, lr: float = 1e-3,
                 betas: tuple[float, float, float] = (0.9, 0.999, 0.9999), alpha: float = 5.0,
                 t_alpha: int | None = None, t_beta3: int | None = None, eps: float = 1e-8,
                 weight_decay: float = 0.01, *, maximize: bool = False,
                 skip_nonfinite: bool = False,
                 **precision: Unpack[PrecisionOptions]) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, alpha=alpha, t_alpha=t_alpha,
                                      t_beta3=t_beta3, eps=eps, weight_decay=weight_decay,
                                      maximize=maximize),
                         skip_nonfinite=skip_nonfinite, **precision)
