"""Adan: adaptive Nesterov momentum (kernel "adan"). torch.optim has no Adan."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple

from .. import _validation as v
from .._spec import OptSpec, Slot
from ..optimizer import Optimizer

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .._precision import PrecisionOptions
    from .._typing import ParamsArg


def _betas3(value: Any, name: str) -> tuple[float, float, float]:
    """Adan's (beta1, beta2, beta3): three floats in [0, 1), as the official release checks."""
    try:
        items = tuple(value)
    except TypeError:
        items = ()
    if len(items) != 3:
        raise ValueError(f"{name} must be a tuple of exactly 3 numbers (beta1, beta2, beta3), "
                         f"each in [0, 1), e.g. (0.98, 0.92, 0.99); got {value!r}")
    b1, b2, b3 = (v.unit_interval(x, f"{name}[{i}]") for i, x in enumerate(items))
    return b1, b2, b3


class AdanHyper(NamedTuple):
    """Adan's hyperparameters, validated (the functional call's, with its defaults)."""

    lr: Annotated[float, v.finite_nonneg]
    # spelled out, not a constant: the docs build reads the default as text
    betas: Annotated[tuple[float, float, float], _betas3] = (0.98, 0.92, 0.99)
    eps: Annotated[float, v.finite_nonneg] = 1e-8
    weight_decay: Annotated[float, v.finite_nonneg] = 0.0
    no_prox: Annotated[bool, v.flag] = False


def adan_scalars(step: int, lr: float, betas: tuple[float, float, float], eps: float,
                 weight_decay: float, no_prox: bool) -> tuple[float, ...]:
    """The kernel's scalars for one step count (order: _kernels.SCALARS['adan'])."""
    beta1, beta2, beta3 = betas
    bias_correction1 = 1.0 - beta1 ** step
    bias_correction2 = 1.0 - beta2 ** step
    bias_correction3 = 1.0 - beta3 ** step
    mode = 1 if step == 1 else 0
    decay = 1.0
    if weight_decay != 0.0:
        if no_prox:
            decay = 1.0 - lr * weight_decay
            mode |= 2
        else:
            decay = 1.0 / (1.0 + lr * weight_decay)
            mode |= 4
    return (1.0, beta1, 1.0 - beta1, beta2, 1.0 - beta2, beta3, 1.0 - beta3, eps,
            lr / bias_correction1, lr * beta2 / bias_correction2,
            1.0 / math.sqrt(bias_correction3), decay, float(mode))


ADAN_SPEC = OptSpec(
    "adan", AdanHyper, adan_scalars,
    state=(Slot("exp_avg", "exp_avgs"), Slot("exp_avg_sq", "exp_avg_sqs"),
           Slot("exp_avg_diff", "exp_avg_diffs"), Slot("neg_pre_grad", "neg_pre_grads")),
    doc="""Fused Adan step over lists (see :class:`fusedoptim.Adan` for the rule).

    ``neg_pre_grads`` holds minus each param's previous gradient (not read on its first
    step, when ``state_steps`` is 0).""")

#: Validate Adan hyperparameters (AdanHyper's fields, in order); return them canonical.
check_adan = ADAN_SPEC.check


class Adan(Optimizer):
    r"""Adan (Xie et al., 2022, "Adan: Adaptive Nesterov Momentum Algorithm for Faster
    Optimizing Deep Models", arXiv:2208.06677), as in the authors' PyTorch release
    (github.com/sail-sg/Adan, ``adan.py``).

    For each param, with g the gradient, g_prev the previous one and t the param's step::

        diff = g - g_prev                     (0 on the first step)
        m    = beta1 * m + (1 - beta1) * g                        exp_avg
        d    = beta2 * d + (1 - beta2) * diff                     exp_avg_diff
        n    = beta3 * n + (1 - beta3) * (g + beta2 * diff)^2     exp_avg_sq
        denom = sqrt(n) / sqrt(1 - beta3^t) + eps
        p    = p * (1 - lr * weight_decay)                        (no_prox=True)
        p    = p - lr / (1 - beta1^t) * m / denom - lr * beta2 / (1 - beta2^t) * d / denom
        p    = p / (1 + lr * weight_decay)                        (no_prox=False: proximal)

    Each beta weights the old value of its average, as in the official release: its
    ``betas=(0.98, 0.92, 0.99)`` are the paper's (0.02, 0.08, 0.01), which weight the new
    value (the paper's ``1 - beta2`` on the Nesterov term is this ``beta2``). The previous
    gradient is kept as ``neg_pre_grad`` (minus it, the official name and sign) and
    rewritten in the same fused pass; the first step's difference is ``g - g``, as the official
    release starts ``neg_pre_grad`` at ``-g``. The kernel multiplies by the precomputed
    ``1 / sqrt(1 - beta3^t)`` and ``1 / (1 + lr * weight_decay)`` and adds both momentum
    terms before one division, so float32 results differ from the official ones by rounding.

    Differences from the official release: no ``max_grad_norm`` (clip first with
    :func:`fusedoptim.clip_grad_norm_`; the official clip divides by ``norm + eps``), no
    ``foreach``/``fused`` switches (this is always one fused pass), and the step count is kept
    per param (the official one per group: the same when every param gets a grad every step).

    Optax: ``optax.adan(learning_rate=lr, b1=beta1, b2=beta2, b3=beta3, eps=eps,
    eps_root=0.0, weight_decay=weight_decay)`` is this optimizer with ``no_prox=True`` only when
    ``beta2 = 0.5``. Optax weights both the Nesterov term in n and the difference term of the
    update with ``1 - b2`` (the paper's formulas, with the paper's new-value beta2 read as an
    old-value weight), where the official release uses ``beta2``. Also: Optax's default
    ``eps_root=1e-8`` goes inside the square root (the official release has none); its weight
    decay is the ``no_prox=True`` form ``p - lr * (u + wd * p)`` (the proximal form has no
    Optax counterpart: divide Optax's weight-decay-free result by ``1 + lr * wd``); its step
    count is one per state; its first difference is 0, as here.

    Args (the official release's names and defaults):
        params: list or dict of float32/float64 C-contiguous arrays, or param groups.
        lr (float): learning rate, default 1e-3, >= 0. May change between steps.
        betas (tuple): (beta1, beta2, beta3), default (0.98, 0.92, 0.99), each in [0, 1).
        eps (float): added to the denominator, default 1e-8, >= 0.
        weight_decay (float): default 0, >= 0.
        no_prox (bool): default False: the proximal decay ``p / (1 + lr * wd)`` after the
            update; True: the decoupled decay ``p * (1 - lr * wd)`` before it.
        skip_nonfinite (bool): default False; skip steps whose grads are not all
            finite (see :class:`fusedoptim.Optimizer`).
        **precision: ``master_weights``, ``state_dtype``, ``stochastic_rounding``, ``seed``:
            half-precision params, master weights and bfloat16 state (see
            :class:`fusedoptim.Optimizer`).

    State per param: ``step``, ``exp_avg`` (m), ``exp_avg_sq`` (n), ``exp_avg_diff`` (d),
    ``neg_pre_grad`` (minus the last gradient).
    """

    spec = ADAN_SPEC

    def __init__(self, params: ParamsArg, lr: float = 1e-3,
                 betas: tuple[float, float, float] = (0.98, 0.92, 0.99), eps: float = 1e-8,
                 weight_decay: float = 0.0, no_prox: bool = False, *,
                 skip_nonfinite: bool = False,
                 **precision: Unpack[PrecisionOptions]) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      no_prox=no_prox),
                         skip_nonfinite=skip_nonfinite, **precision)
