"""LARS: layer-wise adaptive rate scaling for SGD (kernels "lars_norms" + "lars")."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, NamedTuple

import numpy as np

from .. import _kernels
from .. import _validation as v
from .._spec import OptSpec, Slot
from ..optimizer import Optimizer

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .._precision import PrecisionOptions
    from numpy.typing import ArrayLike, NDArray

    from .._typing import ParamsArg

_NORMS = _kernels.REDUCE_IDS["lars_norms"]
_APPLY = _kernels.KERNEL_IDS["lars"]
_RATIO_COLUMN = _kernels.SCALARS["lars"].index("trust_ratio")


class LARSHyper(NamedTuple):
    """LARS's hyperparameters, validated (the functional call's, with its defaults)."""

    lr: Annotated[float, v.finite_nonneg]
    momentum: Annotated[float, v.finite_nonneg] = 0.9
    weight_decay: Annotated[float, v.finite_nonneg] = 0.0
    trust_coefficient: Annotated[float, v.positive] = 0.001
    eps: Annotated[float, v.finite_nonneg] = 1e-8
    nesterov: Annotated[bool, v.flag] = False
    maximize: Annotated[bool, v.flag] = False


def _lars_relations(hyper: LARSHyper, raw: LARSHyper) -> LARSHyper:
    if hyper.nesterov and hyper.momentum <= 0.0:
        raise ValueError(f"nesterov=True requires momentum > 0, got momentum={raw.momentum!r}")
    return hyper


def lars_scalars(step: int, lr: float, momentum: float, weight_decay: float,
                 trust_coefficient: float, eps: float, nesterov: bool,
                 maximize: bool) -> tuple[float, ...]:
    """The kernels' scalars (order: _kernels.SCALARS['lars']); independent of the step. The
    per-tensor "trust_ratio" is filled in by lars_run between the passes."""
    mode = 1 if weight_decay != 0.0 else 0
    if momentum != 0.0:
        mode |= 6 if nesterov else 2
    return (-1.0 if maximize else 1.0, weight_decay, momentum, lr, 1.0, float(mode))


def lars_trust_ratio(param_norm: ArrayLike, grad_norm: ArrayLike, weight_decay: float,
                     trust_coefficient: float, eps: float) -> NDArray[np.float64]:
    """trust_coefficient * ||p|| / (||g|| + weight_decay * ||p|| + eps) per tensor, in double;
    1 where either norm is 0 (or NaN), as in the common implementations."""
    param_norm = np.asarray(param_norm, dtype=np.float64)
    grad_norm = np.asarray(grad_norm, dtype=np.float64)
    ok = (param_norm > 0.0) & (grad_norm > 0.0)
    denom = np.where(ok, grad_norm + weight_decay * param_norm + eps, 1.0)
    return np.where(ok, trust_coefficient * param_norm / denom, 1.0)


def lars_run(plan: _kernels.Plan, weight_decay: float, trust_coefficient: float,
             eps: float) -> None:
    """Both passes over a bound plan whose other scalars are set: norms, trust ratios in
    double, then the update."""
    per_tensor, _ = plan.reduce(_NORMS)
    ratio = lars_trust_ratio(np.sqrt(per_tensor[:, 0]), np.sqrt(per_tensor[:, 1]),
                             weight_decay, trust_coefficient, eps)
    plan.hp_array[:, _RATIO_COLUMN] = ratio
    plan.run(_APPLY)


def _lars_step(plan: _kernels.Plan, hyper: LARSHyper) -> None:
    lars_run(plan, hyper.weight_decay, hyper.trust_coefficient, hyper.eps)


LARS_SPEC = OptSpec(
    "lars", LARSHyper, lars_scalars, relate=_lars_relations, run=_lars_step,
    # A trust ratio belongs to each tensor: a group whose params tile one buffer (FlatParams)
    # must not step as one flat tensor, whose norms would be the whole group's.
    per_tensor=True, optional_steps=True,
    state=(Slot("momentum_buffer", "momentum_buffer_list", used="momentum"),),
    doc="""Fused LARS step over lists (see :class:`fusedoptim.LARS` for the rule).

    When momentum != 0, ``momentum_buffer_list`` holds a buffer per param, started at zero
    (``np.zeros_like(param)``); it is not used when momentum == 0. The update does not depend
    on step counts: ``state_steps`` is optional, and its entries are incremented when given.""")

#: Validate LARS hyperparameters (LARSHyper's fields, in order); return them canonical.
check_lars = LARS_SPEC.check


class LARS(Optimizer):
    r"""LARS (You, Gitman & Ginsburg, 2017, "Large Batch Training of Convolutional Networks",
    Algorithm 1).

    For each param tensor (a "layer"), with g the gradient (negated when ``maximize``),
    mu = momentum and wd = weight_decay::

        ratio = trust_coefficient * ||p|| / (||g|| + wd * ||p|| + eps)   (1 if ||p|| or ||g|| is 0)
        d = ratio * (g + wd * p)
        b = mu * b + d                                                  (b starts at 0)
        d = d + mu * b   if nesterov   else   b
        p = p - lr * d

    Norms are L2 norms of the whole tensor, accumulated in double. The paper writes the
    momentum with lr inside, ``v = mu * v + lr * ratio * (g + wd * p); p = p - v``; at a
    constant lr that is the same trajectory (v = lr * b), and with a schedule this form scales
    the whole buffer by the current lr, as torch's SGD does. The ratio is applied for every
    tensor and any weight_decay, as in the paper (timm's Lars skips it when weight_decay == 0
    unless ``always_adapt``); tensors usually excluded from LARS (biases, norms) can go in a
    group of another optimizer. The ratio is 1 when ``||p||`` or ``||g||`` is 0 (the common
    implementations' choice; then the step is the plain ``lr * (g + wd * p)``).

    Two fused passes per step, with no temporary arrays: the first reads p and g to
    accumulate each tensor's ``||p||^2`` and ``||g||^2``; the trust ratios are computed in
    double; the second applies the update.

    Args (timm's and torchlars' names):
        params: list or dict of float32/float64 C-contiguous arrays, or param groups.
        lr (float): global learning rate (the paper's gamma), default 1.0, >= 0. May change
            between steps.
        momentum (float): default 0.9, >= 0; 0 keeps no buffer.
        weight_decay (float): default 0, >= 0 (the paper's beta).
        trust_coefficient (float): default 0.001, > 0 (the paper's eta).
        eps (float): default 1e-8, >= 0; added to the ratio's denominator.
        nesterov (bool): default False; needs momentum > 0.
        maximize (bool): default False; ascend instead of descend.
        skip_nonfinite (bool): default False; skip steps whose grads are not all
            finite (see :class:`fusedoptim.Optimizer`).
        **precision: ``master_weights``, ``state_dtype``, ``min_quantized_size``,
            ``rank1_normalization``, ``stochastic_rounding``, ``seed``: half-precision params,
            master weights and bfloat16/int8/int4 state (see :class:`fusedoptim.Optimizer`).

    State per param: ``step`` and ``momentum_buffer`` (only when momentum != 0).
    """


    spec = LARS_SPEC

    def __init__(self, params: ParamsArg, lr: float = 1.0, momentum: float = 0.9,
                 weight_decay: float = 0.0, trust_coefficient: float = 0.001, eps: float = 1e-8,
                 nesterov: bool = False, *, maximize: bool = False,
                 skip_nonfinite: bool = False,
                 **precision: Unpack[PrecisionOptions]) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      trust_coefficient=trust_coefficient, eps=eps,
                                      nesterov=nesterov, maximize=maximize),
                         skip_nonfinite=skip_nonfinite, **precision)
