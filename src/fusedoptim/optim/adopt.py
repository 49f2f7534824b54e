"""ADOPT: Adam with the gradient normalised by the previous second moment (kernel "adopt").
torch.optim has no ADOPT; the authors' release (github.com/iShohei220/adopt) is followed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, NamedTuple

from .. import _validation as v
from .._spec import OptSpec, Slot
from ..optimizer import Optimizer

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .._precision import PrecisionOptions
    from .._typing import ParamsArg


class ADOPTHyper(NamedTuple):
    """ADOPT's hyperparameters, validated (the functional call's, with its defaults)."""

    lr: Annotated[float, v.finite_nonneg]
    beta1: Annotated[float, v.unit_interval]
    beta2: Annotated[float, v.unit_interval]
    eps: Annotated[float, v.positive] = 1e-6
    weight_decay: Annotated[float, v.finite_nonneg] = 0.0
    decouple: Annotated[bool, v.flag] = False
    maximize: Annotated[bool, v.flag] = False


def clip_value(step: int) -> float:
    """The official release's clip at step t (1-based): (t - 1) ** 0.25, its ``step ** 0.25``
    with the step counted before the increment (0 on the first step, which only sets v)."""
    clip: float = float(step - 1) ** 0.25
    return clip


def adopt_scalars(step: int, lr: float, beta1: float, beta2: float, eps: float,
                  weight_decay: float, decouple: bool, maximize: bool) -> tuple[float, ...]:
    """The kernel's scalars for one step count (order: _kernels.SCALARS['adopt'])."""
    first = step == 1
    mode = 4 if first else 0
    if weight_decay != 0.0:
        if not decouple:
            mode |= 1
        elif not first:        # the official first step returns before the decoupled decay
            mode |= 2
    return (-1.0 if maximize else 1.0, beta1, 1.0 - beta1, beta2, 1.0 - beta2, lr,
            weight_decay, 1.0 - lr * weight_decay, eps, clip_value(step), float(mode))


ADOPT_SPEC = OptSpec(
    "adopt", ADOPTHyper, adopt_scalars, pairs={"betas": ("beta1", "beta2")},
    state=(Slot("exp_avg", "exp_avgs"), Slot("exp_avg_sq", "exp_avg_sqs")),
    doc="""Fused ADOPT step over lists (see :class:`fusedoptim.ADOPT` for the rule).

    A param whose ``state_steps`` entry is 0 takes the first step: ``exp_avg_sqs`` += g*g,
    nothing else.""")

#: Validate ADOPT hyperparameters (ADOPTHyper's fields, in order); return them canonical.
check_adopt = ADOPT_SPEC.check


class ADOPT(Optimizer):
    r"""ADOPT (Taniguchi et al., 2024, "ADOPT: Modified Adam Can Converge with Any beta2 with
    the Optimal Rate", NeurIPS 2024, arXiv:2411.02853), as the authors' release
    (github.com/iShohei220/adopt, ``adopt.ADOPT``) computes it.

    For each param, with g the gradient (negated when ``maximize``) and t the step (1-based)::

        g = g + weight_decay * p                       (L2, when not decouple)
        t == 1:  v = v + g * g                          (the first step only sets v; p, m stay)
        t > 1:   p = p * (1 - lr * weight_decay)        (when decouple)
                 u = clamp(g / max(sqrt(v), eps), -(t-1)^0.25, (t-1)^0.25)
                 m = beta1 * m + (1 - beta1) * u
                 p = p - lr * m
                 v = beta2 * v + (1 - beta2) * g * g

    The gradient is normalised by the *previous* v (so it is independent of the current
    gradient, the paper's fix of Adam), then the momentum, and v is updated last. The clip
    ``(t-1)^0.25`` is the release's default ``clip_lambda = step ** 0.25`` on its 0-based
    step count; there is no bias correction. NaN propagates through max and clamp as in
    torch.

    Differences from the release: ``clip_lambda`` is fixed at its default (no argument);
    ``eps`` must be > 0 (the release accepts 0, which divides 0 by 0 for a zero v and g);
    the decoupled decay is ``p * (1 - lr*wd)`` (the release adds ``-lr*wd*p``: the same up to
    rounding); the momentum is the EMA form (the release's ``lerp``: the same up to rounding).

    Optax: ``optax.contrib.adopt(lr, b1=beta1, b2=beta2, eps=eps, use_clipping=True)`` (its
    ``clip_value_fn`` default ``count**0.25`` on the 0-based count is the release's clip, and
    eps sits in the same place, ``max(sqrt(nu), eps)``); L2 weight decay is
    ``optax.chain(optax.add_decayed_weights(wd), optax.contrib.adopt(...))``; the decoupled
    one is ``optax.chain(optax.contrib.scale_by_adopt(beta1, beta2, eps),
    optax.add_decayed_weights(wd), optax.scale_by_learning_rate(lr))``, except that Optax
    decays on the first step too, which the release (and this class) does not.

    Args (the release's names and defaults):
        params: list or dict of float32/float64 C-contiguous arrays, or param groups.
        lr (float): learning rate, default 1e-3, >= 0. May change between steps.
        betas (tuple): (beta1, beta2), default (0.9, 0.9999), each in [0, 1).
        eps (float): default 1e-6, > 0: the floor of sqrt(v).
        weight_decay (float): default 0, >= 0; L2 (added to the gradient) unless decouple.
        decouple (bool): default False; True decays the param directly (AdamW-style).
        maximize (bool): default False; ascend instead of descend (keyword, as in the release).
        skip_nonfinite (bool): default False; skip steps whose grads are not all
            finite (see :class:`fusedoptim.Optimizer`).
        **precision: ``master_weights``, ``state_dtype``, ``min_quantized_size``,
            ``rank1_normalization``, ``stochastic_rounding``, ``seed``: half-precision params,
            master weights and bfloat16/int8/int4 state (see :class:`fusedoptim.Optimizer`).

    State per param: ``step``, ``exp_avg`` (m), ``exp_avg_sq`` (v).
    """

    spec = ADOPT_SPEC

    def __init__(self, params: ParamsArg, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.9999), eps: float = 1e-6,
                 weight_decay: float = 0.0, decouple: bool = False, *, maximize: bool = False,
                 skip_nonfinite: bool = False,
                 **precision: Unpack[PrecisionOptions]) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      decouple=decouple, maximize=maximize),
                         skip_nonfinite=skip_nonfinite, **precision)
