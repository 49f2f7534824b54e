"""LAMB: layer-wise adaptive moments for large batches (kernels "lamb_moments" + "lamb")."""

from __future__ import annotations

import math
from functools import partial
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

_MOMENTS = _kernels.REDUCE_IDS["lamb_moments"]
_APPLY = _kernels.KERNEL_IDS["lamb"]
_STORE_MOMENTS = _kernels.KERNEL_IDS["lamb_store_moments"]
_NORMS = _kernels.REDUCE_IDS["lamb_norms"]
_STEP_COLUMN = _kernels.SCALARS["lamb"].index("step")


class LAMBHyper(NamedTuple):
    """LAMB's hyperparameters, validated (the functional call's, with its defaults)."""

    lr: Annotated[float, v.finite_nonneg]
    beta1: Annotated[float, v.unit_interval]
    beta2: Annotated[float, v.unit_interval]
    eps: Annotated[float, v.positive]
    weight_decay: Annotated[float, v.finite_nonneg] = 0.0
    clamp_value: Annotated[float, partial(v.positive_or_inf, note=" (inf: no clamp)")] = 10.0
    bias_correction: Annotated[bool, v.flag] = True
    maximize: Annotated[bool, v.flag] = False


def lamb_scalars(step: int, lr: float, beta1: float, beta2: float, eps: float,
                 weight_decay: float, clamp_value: float, bias_correction: bool,
                 maximize: bool) -> tuple[float, ...]:
    """The kernels' scalars for one step count (order: _kernels.SCALARS['lamb']). The
    per-tensor "step" (lr times the trust ratio) is filled in by lamb_run between passes."""
    if bias_correction:
        inv_bias_correction1 = 1.0 / (1.0 - beta1 ** step)
        inv_bias_correction2_sqrt = 1.0 / math.sqrt(1.0 - beta2 ** step)
    else:
        inv_bias_correction1 = inv_bias_correction2_sqrt = 1.0
    return (-1.0 if maximize else 1.0, beta1, 1.0 - beta1, beta2, 1.0 - beta2, weight_decay,
            eps, inv_bias_correction1, inv_bias_correction2_sqrt, 0.0,
            1.0 if weight_decay != 0.0 else 0.0)


def lamb_trust_ratio(param_norm: ArrayLike, update_norm: ArrayLike,
                     clamp_value: float) -> NDArray[np.float64]:
    """phi(||p||) / ||u|| per tensor, in double (NumPy arrays or floats), with
    phi(z) = min(z, clamp_value); 1 where either norm is 0 (or NaN), as in the common
    implementations: a zero-initialised tensor would otherwise never move."""
    param_norm = np.asarray(param_norm, dtype=np.float64)
    update_norm = np.asarray(update_norm, dtype=np.float64)
    ok = (param_norm > 0.0) & (update_norm > 0.0)
    phi = np.minimum(param_norm, clamp_value)
    return np.where(ok, phi / np.where(ok, update_norm, 1.0), 1.0)


def lamb_run(plan: _kernels.Plan, lr: float, clamp_value: float) -> None:
    """Both passes over a bound plan whose other scalars are set: moments and norms, trust
    ratios in double, then the update. State stored inexactly (bfloat16, int8, int4) takes
    three: the moments are stored first, so that the norm and the update both use them as
    stored (lamb.pxi.tp)."""
    if plan.storages[2] in ("float32", "float64"):
        per_tensor, _ = plan.reduce(_MOMENTS)
    else:
        plan.run(_STORE_MOMENTS)
        per_tensor, _ = plan.reduce(_NORMS)
    ratio = lamb_trust_ratio(np.sqrt(per_tensor[:, 0]), np.sqrt(per_tensor[:, 1]), clamp_value)
    plan.hp_array[:, _STEP_COLUMN] = lr * ratio
    plan.run(_APPLY)


def _lamb_step(plan: _kernels.Plan, hyper: LAMBHyper) -> None:
    lamb_run(plan, hyper.lr, hyper.clamp_value)


LAMB_SPEC = OptSpec(
    "lamb", LAMBHyper, lamb_scalars, pairs={"betas": ("beta1", "beta2")}, run=_lamb_step,
    # A trust ratio belongs to each tensor: a group whose params tile one buffer (FlatParams)
    # must not step as one flat tensor, whose norms would be the whole group's.
    per_tensor=True,
    state=(Slot("exp_avg", "exp_avgs"), Slot("exp_avg_sq", "exp_avg_sqs")),
    doc="""Fused LAMB step over lists (see :class:`fusedoptim.LAMB` for the rule): two passes,
    the trust ratio of each param computed from its own norms.""")

#: Validate LAMB hyperparameters (LAMBHyper's fields, in order); return them canonical.
check_lamb = LAMB_SPEC.check


class LAMB(Optimizer):
    r"""LAMB (You et al., 2019, "Large Batch Optimization for Deep Learning: Training BERT in
    76 minutes", Algorithm 2).

    For each param tensor (a "layer"), with g the gradient (negated when ``maximize``) and t
    the step::

        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        r = (m / (1 - beta1^t)) / (sqrt(v) / sqrt(1 - beta2^t) + eps)   (eps after correction)
        u = r + weight_decay * p
        p = p - lr * phi(||p||) / ||u|| * u,      phi(z) = min(z, clamp_value)

    Norms are L2 norms of the whole tensor, accumulated in double; the trust ratio
    ``phi(||p||) / ||u||`` is 1 when ``||p||`` or ``||u||`` is 0 (a zero-initialised bias
    would otherwise never move). The ratio is applied for every tensor and any weight_decay,
    as in the paper (NVIDIA's and timm's versions skip it when weight_decay == 0 unless told
    otherwise; put tensors you want excluded in a group of another optimizer).
    ``clamp_value`` is the paper's upper bound gamma_u of phi (the lower bound is 0), as in
    torch-optimizer's Lamb; ``inf`` disables it. ``bias_correction=False`` drops the two
    bias corrections. Gradient clipping is not built in: call
    :func:`fusedoptim.clip_grad_norm_` first, as the paper's BERT runs do.

    Two fused passes per step, with no temporary arrays: the first updates m and v and
    accumulates each tensor's ``||p||^2`` and ``||u||^2``; the trust ratios are computed in
    double; the second recomputes u from m, v and p (bitwise the same u) and applies it.

    Args (the names of torch-optimizer's Lamb, with the paper's defaults):
        params: list or dict of float32/float64 C-contiguous arrays, or param groups.
        lr (float): learning rate, default 1e-3, >= 0. May change between steps.
        betas (tuple): (beta1, beta2), default (0.9, 0.999), each in [0, 1).
        eps (float): default 1e-6, > 0.
        weight_decay (float): default 0, >= 0 (decoupled: inside the trust-ratio update).
        clamp_value (float): default 10, > 0 or inf; upper bound on ``||p||`` in phi.
        bias_correction (bool): default True.
        maximize (bool): default False; ascend instead of descend.
        skip_nonfinite (bool): default False; skip steps whose grads are not all
            finite (see :class:`fusedoptim.Optimizer`).
        **precision: ``master_weights``, ``state_dtype``, ``min_quantized_size``,
            ``rank1_normalization``, ``stochastic_rounding``, ``seed``: half-precision params,
            master weights and bfloat16/int8/int4 state (see :class:`fusedoptim.Optimizer`).

    State per param: ``step``, ``exp_avg`` (m), ``exp_avg_sq`` (v).
    """


    spec = LAMB_SPEC

    def __init__(self, params: ParamsArg, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0, clamp_value: float = 10.0, *,
                 bias_correction: bool = True, maximize: bool = False,
                 skip_nonfinite: bool = False,
                 **precision: Unpack[PrecisionOptions]) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      clamp_value=clamp_value, bias_correction=bias_correction,
                                      maximize=maximize),
                         skip_nonfinite=skip_nonfinite, **precision)
