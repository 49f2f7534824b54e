"""MADGRAD: momentumized, adaptive, dual-averaged gradients (kernel "madgrad"). torch.optim has
no MADGRAD; the official release is the ``madgrad`` package (facebookresearch/madgrad)."""

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


class MADGRADHyper(NamedTuple):
    """MADGRAD's hyperparameters, validated (the functional call's, with its defaults)."""

    lr: Annotated[float, v.finite_nonneg]
    momentum: Annotated[float, v.unit_interval] = 0.9
    weight_decay: Annotated[float, v.finite_nonneg] = 0.0
    eps: Annotated[float, v.finite_nonneg] = 1e-6
    decouple_decay: Annotated[bool, v.flag] = False
    maximize: Annotated[bool, v.flag] = False


def madgrad_lr(lr: float, eps: float) -> float:
    """The official release's working learning rate: ``lr + eps`` "for stability", but 0 for
    ``lr == 0``."""
    return lr + eps if lr != 0.0 else 0.0


def madgrad_scalars(step: int, lr: float, momentum: float, weight_decay: float, eps: float,
                    decouple_decay: bool, maximize: bool,
                    fresh: bool = False) -> tuple[float, ...]:
    """The kernel's scalars for the `step`-th update of a param (1-based; order:
    _kernels.SCALARS['madgrad']). `fresh`: the x0 buffer was created this step, so the
    kernel computes it (p + s / rms, exactly p on a first step) before the update."""
    lr_e = madgrad_lr(lr, eps)
    lamb = lr_e * math.pow(step, 0.5)          # the release's lr * (k + 1) ** 0.5, k = step - 1
    ck = 1.0 - momentum
    mode = 0
    if momentum != 0.0:
        mode = 3 if fresh else 1
    # The kernel adds wd * p to the grad and subtracts decay_coef * p from the update
    # unconditionally: the one not in use is 0.
    l2 = 0.0 if decouple_decay else weight_decay
    decoupled = lr_e * weight_decay if decouple_decay else 0.0
    return (-1.0 if maximize else 1.0, lamb, l2, eps, 1.0 - ck, ck, decoupled, float(mode))


MADGRAD_SPEC = OptSpec(
    "madgrad", MADGRADHyper, madgrad_scalars,
    state=(Slot("grad_sum_sq", "grad_sum_sqs"), Slot("s", "ss"),
           # The dual-averaging anchor, kept only with momentum (as in the release); without,
           # it is recomputed from p, s and grad_sum_sq. A new one is computed that way too:
           # p itself on a param's first step.
           Slot("x0", "x0s", used="momentum", fresh=True,
                hint="None (it is computed from the param, s and grad_sum_sq)")),
    doc="""Fused MADGRAD step over lists (see :class:`fusedoptim.MADGRAD` for the rule).
    ``state_steps`` counts each param's updates (the release's ``k`` is that count before
    the update). A ``None`` entry of ``x0s`` (with momentum) is created from the param, s and
    grad_sum_sq: the param itself before the first step.""")

#: Validate MADGRAD hyperparameters (MADGRADHyper's fields, in order); return them canonical.
check_madgrad = MADGRAD_SPEC.check


class MADGRAD(Optimizer):
    r"""MADGRAD (Defazio and Jelassi, 2021, "Adaptivity without Compromise: A Momentumized,
    Adaptive, Dual Averaged Gradient Method for Stochastic Optimization"), with the semantics of
    the official release (the ``madgrad`` package, version 1.3).

    For each param, with g the gradient (negated when ``maximize``), k the number of updates the
    param had before this one, and ``lr' = lr + eps`` (0 when ``lr == 0``: the release adds eps
    to the lr "for stability")::

        g    = g + weight_decay * p                    (unless decouple_decay)
        lamb = lr' * sqrt(k + 1)
        x0   = p                                       (at the first step; kept in state)
        grad_sum_sq = grad_sum_sq + lamb * g * g
        s    = s + lamb * g
        z    = x0 - s / (cbrt(grad_sum_sq) + eps)      (s / 0 read as 0 when eps == 0)
        p    = momentum * p + (1 - momentum) * z       (p is a moving average of z)
        p    = p - lr' * weight_decay * p_old          (when decouple_decay)

    Without momentum (``momentum == 0``) x0 is not stored: it is recomputed before each update as
    ``p + s / (cbrt(grad_sum_sq) + eps)`` from the state before it, and ``p = z``, as in the
    release. The cube root is computed with + - * / only (a bit-pattern first guess, then
    Halley's iteration and a Newton step; within 1 ulp of the exact root), so the NumPy twin
    matches the kernel bitwise.

    Args (the official release's names and defaults):
        params: list or dict of float32/float64 C-contiguous arrays, or param groups.
        lr (float): learning rate, default 1e-2, >= 0. May change between steps.
        momentum (float): default 0.9, in [0, 1). It interpolates, ``ck = 1 - momentum``;
            0 keeps no x0 buffer.
        weight_decay (float): default 0, >= 0. An L2 term added to the grad (which then enters
            grad_sum_sq and s), or with ``decouple_decay`` AdamW-style decay of the param.
        eps (float): default 1e-6, >= 0; added to the cube root in the denominator (and to the
            lr, see above).
        decouple_decay (bool): default False; decoupled weight decay (the release's
            "experimental" option).
        maximize (bool): default False; ascend instead of descend (not in the release).
        skip_nonfinite (bool): default False; skip steps whose grads are not all
            finite (see :class:`fusedoptim.Optimizer`).
        **precision: ``master_weights``, ``state_dtype`` (float32 or bfloat16; MADGRAD has no
            int8/int4 state), ``stochastic_rounding``, ``seed``: half-precision params, master
            weights and bfloat16 state (see :class:`fusedoptim.Optimizer`).

    State per param: ``step``, ``grad_sum_sq``, ``s`` and, with momentum, ``x0``.

    Differences from the release: its step counter ``k`` is one for the whole optimizer and
    advances on every ``step()``; here each param counts its own updates (as torch.optim's
    optimizers do), which is the same while every param gets a grad at every step. The release
    adds the L2 term into ``p.grad`` itself; the grads passed here are never written. With
    ``momentum == 0`` and ``eps == 0`` the release's recomputed x0 is NaN where nothing has been
    accumulated (0 / 0); here ``s / rms`` is 0 there too, as in its update. The release's sparse
    gradient path has no counterpart (see :class:`fusedoptim.SparseAdam` for sparse grads). A
    param whose momentum is switched from 0 to nonzero mid-run gets its x0 recomputed from its
    state (the release would fail on the missing buffer).

    Optax: ``optax.contrib.madgrad(learning_rate=lr, momentum=momentum,
    weight_decay=weight_decay, eps=eps)`` is the same update, up to rounding, with these
    differences: it adds eps to the lr also for ``lr == 0``; it stores x0 also without momentum
    (the same update); it has no decouple_decay and no maximize; and (Optax 0.2.8) it takes
    ``sqrt(k + 1)`` of its int32 step count in float32 even under ``jax_enable_x64``, which
    moves float64 results by ~1e-8 relative (tests/test_madgrad.py compensates for it and
    then agrees to 1e-9).
    """

    spec = MADGRAD_SPEC

    def __init__(self, params: ParamsArg, lr: float = 1e-2, momentum: float = 0.9,
                 weight_decay: float = 0.0, eps: float = 1e-6, decouple_decay: bool = False, *,
                 maximize: bool = False, skip_nonfinite: bool = False,
                 **precision: Unpack[PrecisionOptions]) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      eps=eps, decouple_decay=decouple_decay,
                                      maximize=maximize),
                         skip_nonfinite=skip_nonfinite, **precision)
