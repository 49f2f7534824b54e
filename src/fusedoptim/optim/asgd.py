"""ASGD: averaged stochastic gradient descent (kernel "asgd")."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, NamedTuple

from .. import _validation as v
from .._spec import OptSpec, ScalarSlot, Slot
from ..optimizer import Optimizer

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .._precision import PrecisionOptions
    from .._typing import ParamsArg


class ASGDHyper(NamedTuple):
    """ASGD's hyperparameters, validated (the functional call's, with its defaults)."""

    lr: Annotated[float, v.finite_nonneg]
    lambd: Annotated[float, v.finite_nonneg]
    alpha: Annotated[float, v.finite_nonneg]
    t0: Annotated[float, v.finite_nonneg]
    weight_decay: Annotated[float, v.finite_nonneg] = 0.0
    maximize: Annotated[bool, v.flag] = False


def asgd_scalars(step: int, mu: float, eta: float, lr: float, lambd: float, alpha: float,
                 t0: float, weight_decay: float,
                 maximize: bool) -> tuple[tuple[float, ...], tuple[float, float]]:
    """(kernel scalars, (next mu, next eta)) for one step count and the tensor's current mu
    and eta (left by its previous step), all in double."""
    mode = (1 if weight_decay != 0.0 else 0) | (2 if mu != 1.0 else 0)
    row = (-1.0 if maximize else 1.0, weight_decay, 1.0 - lambd * eta, eta, mu, float(mode))
    try:
        new_eta = lr / ((1.0 + lambd * lr * step) ** alpha)
    except OverflowError:
        # the power is beyond the doubles (lambd and alpha both large): torch's tensor power
        # is inf, and eta = lr / inf = 0 (Python's float power raises instead)
        new_eta = 0.0
    new_mu = 1.0 / max(1.0, step - t0)
    return row, (new_mu, new_eta)


ASGD_SPEC = OptSpec(
    "asgd", ASGDHyper, asgd_scalars, state=(Slot("ax", "axs"),),
    # the order of torch's functional asgd(..., mus, etas, ...)
    scalar_state=(ScalarSlot("mu", "mus", init=1.0), ScalarSlot("eta", "etas", init="lr")),
    doc="""Fused ASGD step over lists (see :class:`fusedoptim.ASGD` for the rule).

    ``mus`` and ``etas`` are lists of floats (1.0 and lr before a param's first step),
    updated in place for every param that has a grad, like ``state_steps``.""")

#: Validate ASGD hyperparameters (ASGDHyper's fields, in order); return them canonical.
check_asgd = ASGD_SPEC.check


class ASGD(Optimizer):
    r"""ASGD (Polyak & Juditsky, 1992, "Acceleration of Stochastic Approximation by
    Averaging").

    For each param, with g the gradient (negated when ``maximize``), t the step, and eta
    and mu as left by the previous step (eta starts at lr, mu at 1)::

        g   = g + weight_decay * p                   (L2 penalty)
        p   = p * (1 - lambd * eta)
        p   = p - eta * g
        ax  = ax + (p - ax) * mu     if mu != 1,  else  ax = p
        eta = lr / (1 + lambd * lr * t)^alpha        (for the next step)
        mu  = 1 / max(1, t - t0)

    ``ax`` is the averaged solution (read it from ``state[i]["ax"]``): it follows p until
    the mu set at step t - 1, 1 / max(1, t - 1 - t0), drops below 1, and is then the
    running mean of the iterates (for an integer t0, of steps t0 + 2 .. t). eta and mu are
    per-param state, floats here, kept and checkpointed as torch keeps them, and computed
    in double in Python; the kernel only gets scalars.

    Args (torch.optim.ASGD's names and defaults):
        params: list or dict of float32/float64 C-contiguous arrays, or param groups.
        lr (float): learning rate, default 1e-2, >= 0. Enters eta from the next step on.
        lambd (float): decay term, default 1e-4, >= 0.
        alpha (float): power for the eta schedule, default 0.75, >= 0.
        t0 (float): step after which averaging starts, default 1e6, >= 0.
        weight_decay (float): L2 penalty, default 0, >= 0.
        maximize (bool): default False; ascend instead of descend.
        skip_nonfinite (bool): default False; skip steps whose grads are not all
            finite (see :class:`fusedoptim.Optimizer`).
        **precision: ``master_weights``, ``state_dtype``, ``min_quantized_size``,
            ``rank1_normalization``, ``stochastic_rounding``, ``seed``: half-precision params,
            master weights and bfloat16/int8/int4 state (see :class:`fusedoptim.Optimizer`).

    State per param: ``step``, ``eta``, ``mu``, ``ax``.
    """


    spec = ASGD_SPEC

    def __init__(self, params: ParamsArg, lr: float = 1e-2, lambd: float = 1e-4,
                 alpha: float = 0.75, t0: float = 1e6, weight_decay: float = 0.0, *,
                 maximize: bool = False, skip_nonfinite: bool = False,
                 **precision: Unpack[PrecisionOptions]) -> None:
        super().__init__(params, dict(lr=lr, lambd=lambd, alpha=alpha, t0=t0,
                                      weight_decay=weight_decay, maximize=maximize),
                         skip_nonfinite=skip_nonfinite, **precision)
