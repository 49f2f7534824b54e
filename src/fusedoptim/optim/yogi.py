"""Yogi: Adam with an additive, sign-controlled second moment (kernel "yogi"). torch.optim has
no Yogi; the names and defaults are torch-optimizer's, the semantics the paper's."""

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


class YogiHyper(NamedTuple):
    """Yogi's hyperparameters, validated: the functional call's, then the class's
    ``initial_accumulator`` (it only sets the moments' initial value, which the functional
    caller fills in itself)."""

    lr: Annotated[float, v.finite_nonneg]
    beta1: Annotated[float, v.unit_interval]
    beta2: Annotated[float, v.unit_interval]
    eps: Annotated[float, v.finite_nonneg]
    weight_decay: Annotated[float, v.finite_nonneg] = 0.0
    initial_accumulator: Annotated[float, v.finite_nonneg] = 1e-6


def yogi_scalars(step: int, lr: float, beta1: float, beta2: float, eps: float,
                 weight_decay: float) -> tuple[float, ...]:
    """The kernel's scalars for one step count (order: _kernels.SCALARS['yogi'])."""
    return (1.0, beta1, 1.0 - beta1, -(1.0 - beta2), weight_decay, eps,
            lr / (1.0 - beta1 ** step), 1.0 / math.sqrt(1.0 - beta2 ** step),
            1.0 if weight_decay != 0.0 else 0.0)


YOGI_SPEC = OptSpec(
    "yogi", YogiHyper, yogi_scalars, pairs={"betas": ("beta1", "beta2")},
    class_only=("initial_accumulator",),
    state=(Slot("exp_avg", "exp_avgs", init="initial_accumulator",
                hint="np.full_like(param, initial_accumulator) (1e-6 by default)"),
           Slot("exp_avg_sq", "exp_avg_sqs", init="initial_accumulator",
                hint="np.full_like(param, initial_accumulator) (1e-6 by default)")),
    doc="""Fused Yogi step over lists (see :class:`fusedoptim.Yogi` for the rule).

    As in the class, both moments start at ``initial_accumulator`` (1e-6 by default): create
    them with ``np.full_like(param, 1e-6)``.""")

#: Validate Yogi hyperparameters (YogiHyper's fields, in order); return them canonical.
check_yogi = YOGI_SPEC.check


class Yogi(Optimizer):
    r"""Yogi (Zaheer, Reddi, Sachan, Kale and Kumar, 2018, "Adaptive Methods for Nonconvex
    Optimization", NeurIPS; Algorithm 2).

    For each param, with g the gradient and t the step::

        g = g + weight_decay * p                          (L2 penalty, if weight_decay != 0)
        m = beta1 * m + (1 - beta1) * g
        v = v - (1 - beta2) * sign(v - g^2) * g^2
        p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    Where Adam moves v toward g^2 by ``(1 - beta2) (g^2 - v)``, Yogi moves it by
    ``(1 - beta2) g^2`` in the direction of g^2, so v grows as fast as Adam's but decays
    more slowly once the gradients shrink. Both moments start at ``initial_accumulator``
    (not zero) and both bias corrections are applied as in Adam; eps is added outside the
    square root, after the correction. sign(0) = 0 and a NaN propagates.

    No official PyTorch release exists; this follows torch-optimizer's ``Yogi`` (whose
    names and defaults these are, with the initial accumulator of TensorFlow Addons'
    implementation) and the paper. Differences from other releases:

    * **Optax**: ``optax.yogi(learning_rate=lr, b1=betas[0], b2=betas[1], eps=eps)`` is the
      same rule (its ``scale_by_yogi`` defaults ``initial_accumulator_value=1e-6`` and
      ``eps_root=0.0``; set ``initial_accumulator_value`` for another ``initial_accumulator``).
      It has no weight decay: ``weight_decay`` (an L2 penalty folded into the gradient, as
      torch-optimizer's) maps to ``optax.chain(optax.add_decayed_weights(weight_decay),
      optax.scale_by_yogi(b1, b2, eps, initial_accumulator_value=initial_accumulator),
      optax.scale_by_learning_rate(lr))``. Optax divides both moments by their corrections
      (``m_hat / (sqrt(v_hat) + eps)``); here ``lr / (1 - beta1^t)`` and
      ``1 / sqrt(1 - beta2^t)`` are folded into scalars in double, which agrees to rounding.
    * **torch-optimizer**: the same rule and operation order; it refuses ``lr <= 0`` (here
      ``lr >= 0``, so that schedules may reach 0) and does not check ``initial_accumulator``
      (here >= 0: a negative v has no square root).
    * **The paper** (Algorithm 2) has no bias correction, starts m and v at 0 and adds eps
      to sqrt(v); the corrections and the 1e-6 start are every release's choice.

    Args (torch-optimizer's names and defaults):
        params: list or dict of float32/float64 C-contiguous arrays, or param groups.
        lr (float): learning rate, default 1e-2, >= 0. May change between steps.
        betas (tuple): (beta1, beta2), default (0.9, 0.999), each in [0, 1).
        eps (float): default 1e-3 (larger than Adam's: the paper's choice), >= 0.
        initial_accumulator (float): the value m and v start at, default 1e-6, >= 0.
        weight_decay (float): L2 penalty folded into the gradient, default 0, >= 0.
        skip_nonfinite (bool): default False; skip steps whose grads are not all
            finite (see :class:`fusedoptim.Optimizer`).
        **precision: ``master_weights``, ``state_dtype``, ``stochastic_rounding``, ``seed``:
            half-precision params, master weights and bfloat16 state (see
            :class:`fusedoptim.Optimizer`); int8/int4 state is not offered.

    State per param: ``step``, ``exp_avg`` (m), ``exp_avg_sq`` (v).
    """

    spec = YOGI_SPEC

    def __init__(self, params: ParamsArg, lr: float = 1e-2,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-3,
                 initial_accumulator: float = 1e-6, weight_decay: float = 0.0, *,
                 skip_nonfinite: bool = False,
                 **precision: Unpack[PrecisionOptions]) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      initial_accumulator=initial_accumulator),
                         skip_nonfinite=skip_nonfinite, **precision)
