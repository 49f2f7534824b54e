"""SGD: plain, heavy-ball momentum (torch's form or the notes' EMA form), Nesterov: one kernel."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Annotated, NamedTuple

from .. import _validation as v
from .._spec import OptSpec, Slot
from ..optimizer import Optimizer

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .._precision import PrecisionOptions
    from .._typing import ParamsArg

MOMENTUM_STYLES = ("torch", "ema")


class SGDHyper(NamedTuple):
    """SGD's hyperparameters, validated (the functional call's, with its defaults).
    momentum's range depends on momentum_style: it is checked in _sgd_relations."""

    lr: Annotated[float, v.finite_nonneg]
    momentum: Annotated[float, v.real] = 0.0
    dampening: Annotated[float, v.unit_closed] = 0.0
    weight_decay: Annotated[float, v.finite_nonneg] = 0.0
    nesterov: Annotated[bool, v.flag] = False
    maximize: Annotated[bool, v.flag] = False
    momentum_style: Annotated[str, partial(v.choice, options=MOMENTUM_STYLES)] = "torch"


def _sgd_relations(hyper: SGDHyper, raw: SGDHyper) -> SGDHyper:
    if hyper.momentum_style == "ema":
        v.unit_interval(raw.momentum, "momentum")    # an EMA weight: beta in [0, 1)
    else:
        v.finite_nonneg(raw.momentum, "momentum")    # torch accepts any momentum >= 0
    if hyper.momentum_style == "ema" and hyper.dampening != 0.0:
        raise ValueError(f"dampening must be 0 with momentum_style='ema' (the EMA form "
                         f"already weights the gradient by 1 - momentum), got "
                         f"dampening={raw.dampening!r}")
    if hyper.nesterov and hyper.momentum <= 0.0:
        raise ValueError(f"nesterov=True requires momentum > 0, got momentum={raw.momentum!r}")
    if hyper.nesterov and hyper.dampening != 0.0:
        raise ValueError(f"nesterov=True requires dampening=0, got "
                         f"dampening={raw.dampening!r}")
    return hyper


def sgd_scalars(step: int, lr: float, momentum: float, dampening: float, weight_decay: float,
                nesterov: bool, maximize: bool, momentum_style: str,
                fresh: bool = False) -> tuple[float, ...]:
    """The kernel's scalars (order: _kernels.SCALARS['sgd']). `fresh` marks the first update
    of a new momentum buffer, which torch's form starts at the gradient itself."""
    mode = 1 if weight_decay != 0.0 else 0
    if momentum != 0.0:
        mode |= 2
        if nesterov:
            mode |= 4
        if fresh and momentum_style == "torch":
            mode |= 8
    if momentum_style == "ema":
        grad_weight = nesterov_grad_weight = 1.0 - momentum
    else:
        grad_weight, nesterov_grad_weight = 1.0 - dampening, 1.0
    return (-1.0 if maximize else 1.0, lr, weight_decay, momentum, grad_weight,
            nesterov_grad_weight, float(mode))


SGD_SPEC = OptSpec(
    "sgd", SGDHyper, sgd_scalars, relate=_sgd_relations, optional_steps=True,
    # torch starts a new momentum buffer at the gradient (fresh)
    state=(Slot("momentum_buffer", "momentum_buffer_list", used="momentum", fresh=True),),
    doc="""Fused SGD step over lists (see :class:`fusedoptim.SGD` for the rule).

    As in torch.optim.sgd, when momentum != 0 ``momentum_buffer_list`` holds an array or None
    per param, and a None entry of a param with a grad is created here (torch's form starts it
    at the gradient, the "ema" form at 0) and stored in the list. It is not used when
    momentum == 0. SGD does not use step counts: ``state_steps`` is optional, and its entries
    are incremented when given.""")

#: Validate SGD hyperparameters (SGDHyper's fields, in order); return them canonical.
check_sgd = SGD_SPEC.check


class SGD(Optimizer):
    r"""Stochastic gradient descent, optionally with momentum or Nesterov momentum.

    Robbins & Monro (1951), "A Stochastic Approximation Method"; heavy-ball momentum: Polyak
    (1964), "Some methods of speeding up the convergence of iteration methods"; Nesterov
    momentum as in Sutskever, Martens, Dahl & Hinton (2013), "On the importance of
    initialization and momentum in deep learning".

    For each param, with g the gradient (negated when ``maximize``) and mu = momentum::

        g = g + weight_decay * p                     (L2, when weight_decay != 0)

        momentum == 0:       p = p - lr * g          (no state buffer)

        momentum_style="torch" (default; torch.optim.SGD):
            b = g                                    (first step: the buffer starts at g)
            b = mu * b + (1 - dampening) * g         (later steps)
            d = g + mu * b   if nesterov   else   b
            p = p - lr * d

        momentum_style="ema" (the notes' EMA form, beta = mu):
            v = beta * v + (1 - beta) * g            (v starts at 0)
            d = (1 - beta) * g + beta * v   if nesterov   else   v
            p = p - lr * d

    The EMA form is torch's form with v = (1 - beta) * b, i.e. torch's trajectory with lr
    scaled by (1 - beta), for any lr schedule.

    The notes' first form, ``v = mu * v - lr * g; p = p + v``, keeps lr inside the velocity
    (v = -lr * b). At a constant lr it visits exactly the same points as torch's form. When lr
    changes (a scheduler) they part: form 1's v holds every past gradient scaled by the lr of
    its own step, so a new lr only applies to new gradients while the old velocity keeps its
    old scale and decays as mu^k; torch's form scales the whole buffer, past gradients
    included, by the current lr, so an lr drop slows the step at once.

    Nesterov. The look-ahead form (Sutskever et al. 2013) keeps theta and v and takes the
    gradient at the look-ahead point::

        v     = mu * v - lr * grad f(theta + mu * v)
        theta = theta + v

    torch's form (used here) changes variables to the look-ahead point itself,
    p = theta + mu * v, and b = -v / lr. Substituting gives b = mu * b + grad f(p) and
    p = p - lr * (grad f(p) + mu * b): the gradient is taken at p, and at a constant lr the
    points visited are the same. Only what the param holds differs: p is theta + mu * v,
    not theta (the two converge to the same point, where v -> 0).

    Args (torch.optim.SGD's names and defaults):
        params: list or dict of float32/float64 C-contiguous arrays, or param groups.
        lr (float): learning rate, default 1e-3, finite >= 0. May change between steps.
        momentum (float): default 0 (plain SGD), finite >= 0 (in [0, 1) for "ema").
        dampening (float): default 0, in [0, 1]; the first step is not damped, as in torch.
        weight_decay (float): default 0, finite >= 0; L2 penalty added to the gradient.
        nesterov (bool): default False; needs momentum > 0 and dampening = 0, as in torch.
        maximize (bool): default False; ascend instead of descend.
        momentum_style (str): "torch" (default) or "ema" (not in torch; dampening must be 0).
        skip_nonfinite (bool): default False; skip steps whose grads are not all
            finite (see :class:`fusedoptim.Optimizer`).
        **precision: ``master_weights``, ``state_dtype``, ``min_quantized_size``,
            ``rank1_normalization``, ``stochastic_rounding``, ``seed``: half-precision params,
            master weights and bfloat16/int8/int4 state (see :class:`fusedoptim.Optimizer`).

    State per param: ``momentum_buffer`` (only when momentum != 0) and ``step``.
    """


    spec = SGD_SPEC

    def __init__(self, params: ParamsArg, lr: float = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False, *,
                 maximize: bool = False, momentum_style: str = "torch",
                 skip_nonfinite: bool = False,
                 **precision: Unpack[PrecisionOptions]) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize, momentum_style=momentum_style),
                         skip_nonfinite=skip_nonfinite, **precision)
