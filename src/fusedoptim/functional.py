"""Functional API: one fused, in-place step over lists of arrays, for frameworks to embed.

Each function takes the params, their grads, their state buffers and their step counts as
parallel lists, like ``torch.optim.functional``, and updates all of them in place in one
GIL-free call. ``state_steps`` is a list of ints (or an int64 array): each entry whose param has
a grad is incremented, as torch does. Per-tensor scalar state (NAdam's ``mu_products``,
ASGD's ``mus`` and ``etas``) is passed the same way, as lists of floats updated in place.
``fusedoptim.reference`` has the same functions in plain NumPy.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _kernels
from . import _validation as v
from .optim.adam import adam_scalars, check_adam
from .optim.adamax import adamax_scalars, check_adamax
from .optim.asgd import asgd_scalars, check_asgd
from .optim.lion import check_lion, lion_scalars
from .optim.nadam import check_nadam, nadam_scalars
from .optim.radam import check_radam, radam_scalars
from .optim.rprop import check_rprop, rprop_scalars
from .optim.adadelta import adadelta_scalars, check_adadelta
from .optim.rmsprop import check_rmsprop, rmsprop_scalars
from .optim.adagrad import adagrad_scalars, check_adagrad
from .optim.sgd import check_sgd, sgd_scalars
from .optim.lamb import check_lamb, lamb_run, lamb_scalars
from .optim.lars import check_lars, lars_run, lars_scalars

if TYPE_CHECKING:
    from ._typing import BufferList, FloatArray, Hyper, StepList


def _fused_step(kernel: str, scalars_fn: Callable[..., Any], hyper: Hyper,
                params: Sequence[FloatArray], grads: BufferList,
                state_lists: list[tuple[str, BufferList | None]], state_steps: StepList | None,
                n_required: int | tuple[str, ...],
                scalar_lists: Sequence[tuple[str, list[float]]] = (),
                init_hints: Mapping[str, str] | None = None, create: Container[str] = (),
                run: Callable[[_kernels.Plan], None] | None = None) -> None:
    """Validate every list, then run `kernel` once over all params. The first `n_required`
    state lists (or those named, when `n_required` is a tuple of names) must hold a buffer
    for every param that has a grad. A state list given as None is one this configuration
    does not use; it is not checked.

    Without `scalar_lists`, ``scalars_fn(step, *hyper)`` gives the kernel scalars. With them
    (``[(name, list of floats)]``, one float per param), ``scalars_fn(step, *current, *hyper)``
    gives ``(kernel scalars, next values)`` and the lists are updated in place.
    `init_hints` maps a state list's name to how its buffers start (default: zeros).

    In the state lists named in `create`, a None entry of a param with a grad is not an
    error: a zero buffer is created and stored into the list (as torch's functional SGD does
    with momentum buffers), and that param's scalars come from
    ``scalars_fn(step, *hyper, fresh=True)``. ``state_steps`` may be None when the update
    does not depend on the step count (then nothing is counted).

    `run(plan)`, when given, runs the step on the bound plan whose scalars are set, instead
    of one pass of `kernel` (LAMB and LARS: a reduction pass, trust ratios, then the update).
    """
    n = len(params) if isinstance(params, (list, tuple)) else -1
    if n < 1:
        raise ValueError(f"params must be a non-empty list of arrays, got {params!r:.60}")
    scalar_lists = list(scalar_lists)
    for name, lst in [("grads", grads), ("state_steps", state_steps)] + state_lists + scalar_lists:
        if lst is None:
            continue
        if not isinstance(lst, (list, tuple, np.ndarray)) or len(lst) != n:
            raise ValueError(f"{name} must be a list with one entry per param ({n}), got "
                             f"{type(lst).__name__} of length "
                             f"{len(lst) if hasattr(lst, '__len__') else 'n/a'}")
    for i, p in enumerate(params):
        _kernels.check_param(p, f"params[{i}]")
    if len({p.dtype for p in params}) > 1:
        raise TypeError("params have mixed dtypes; call once per dtype")
    clash = _kernels.find_overlap(list(params))
    if clash is not None:
        raise ValueError(f"params[{clash[0]}] and params[{clash[1]}] share memory; give each "
                         f"param its own buffer")
    steps = []
    keep_steps = state_steps is not None
    if state_steps is None:             # (not keep_steps, spelled so that mypy narrows)
        state_steps = [0] * n
    for i, s in enumerate(state_steps):
        if isinstance(s, np.ndarray) and s.size == 1:
            s = s.item()
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0:
            raise ValueError(f"state_steps[{i}] must be an integer >= 0, got {s!r}")
        steps.append(int(s))
    state: list[list[FloatArray | None]] = [[] for _ in range(n)]
    # (list, index, new buffer): stored only once everything is valid
    created: list[tuple[list[FloatArray | None], int, FloatArray]] = []
    for name, buffers in state_lists:
        if name in create and buffers is None:
            raise ValueError(f"{name} is None; pass a list with one array or None per param "
                             f"(None entries are created)")
        for i in range(n):
            buf = None if buffers is None else buffers[i]
            if buf is not None:
                _kernels.check_buffer(buf, params[i], f"{name}[{i}]")
            elif name in create and grads[i] is not None:
                if not isinstance(buffers, list):
                    raise TypeError(f"{name}[{i}] is None and {name} is a "
                                    f"{type(buffers).__name__}; pass a list, so that the new "
                                    f"buffer can be stored in it")
                buf = np.zeros_like(params[i])
                created.append((buffers, i, buf))
            state[i].append(buf)
    sstate: list[list[float]] | None = None
    if scalar_lists:
        sstate = [[0.0] * len(scalar_lists) for _ in range(n)]
        for j, (name, values) in enumerate(scalar_lists):
            for i in range(n):
                if values[i] is None and grads[i] is None:
                    continue
                sstate[i][j] = v.scalar_state(values[i], f"{name}[{i}]")
    labels = [f"grads[{i}]" for i in range(n)]
    plan = _kernels.Plan(list(params), state, len(state_lists), len(_kernels.SCALARS[kernel]),
                         labels, steps, sstate)
    plan.bind(list(grads))
    hints = init_hints or {}
    names = [name for name, _ in state_lists]
    required = names[:n_required] if isinstance(n_required, int) else n_required
    for i in range(n):
        if grads[i] is None:
            continue
        for k, name in enumerate(names):
            if name in required and state[i][k] is None:
                raise ValueError(f"{name}[{i}] is None but params[{i}] has a grad; pass a "
                                 f"buffer initialised as "
                                 f"{hints.get(name, 'np.zeros_like(param)')}")
    # Validated: mutate.
    plan.advance()
    if scalar_lists:
        for k, (s, *current) in enumerate(plan.group_active()):
            row, new_state = scalars_fn(s, *current, *hyper)
            plan.set_group(k, row, tuple(new_state))
    else:
        for s in plan.distinct_active_steps():
            plan.set_scalars(scalars_fn(s, *hyper), s)
    for lst, i, buf in created:
        lst[i] = buf
        s = int(plan.steps_array[i])
        plan.set_scalars(scalars_fn(s, *hyper, fresh=True), s, i)
    if run is None:
        plan.run(_kernels.KERNEL_IDS[kernel])
    else:
        run(plan)
    if keep_steps:
        new_steps = plan.steps_array
        for i in range(n):
            state_steps[i] = int(new_steps[i])
    for j, (name, values) in enumerate(scalar_lists):
        for i in range(n):
            if grads[i] is not None:
                values[i] = float(plan.sstate_array[i, j])



def adam(params: Sequence[FloatArray], grads: BufferList, exp_avgs: BufferList,
         exp_avg_sqs: BufferList, max_exp_avg_sqs: BufferList | None, state_steps: StepList,
         *, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float = 0.0,
         amsgrad: bool = False, maximize: bool = False, decoupled_weight_decay: bool = False,
         bias_correction: bool = True) -> None:
    """Fused Adam/AdamW step over lists (see :class:`fusedoptim.Adam` for the rule).

    ``max_exp_avg_sqs`` may be None unless ``amsgrad``.
    """
    hyper = check_adam(lr, beta1, beta2, eps, weight_decay, amsgrad, maximize,
                       decoupled_weight_decay, bias_correction)
    _fused_step("adam", adam_scalars, hyper, params, grads,
                [("exp_avgs", exp_avgs), ("exp_avg_sqs", exp_avg_sqs),
                 ("max_exp_avg_sqs", max_exp_avg_sqs)], state_steps, 3 if amsgrad else 2)


def adamw(params: Sequence[FloatArray], grads: BufferList, exp_avgs: BufferList,
          exp_avg_sqs: BufferList, max_exp_avg_sqs: BufferList | None, state_steps: StepList,
          *, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float = 1e-2,
          amsgrad: bool = False, maximize: bool = False,
          bias_correction: bool = True) -> None:
    """:func:`adam` with decoupled weight decay (AdamW)."""
    adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, lr=lr,
         beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
         maximize=maximize, decoupled_weight_decay=True, bias_correction=bias_correction)


def adamax(params: Sequence[FloatArray], grads: BufferList, exp_avgs: BufferList,
           exp_infs: BufferList, state_steps: StepList, *, lr: float, beta1: float,
           beta2: float, eps: float, weight_decay: float = 0.0,
           maximize: bool = False) -> None:
    """Fused Adamax step over lists (see :class:`fusedoptim.Adamax` for the rule)."""
    hyper = check_adamax(lr, beta1, beta2, eps, weight_decay, maximize)
    _fused_step("adamax", adamax_scalars, hyper, params, grads,
                [("exp_avgs", exp_avgs), ("exp_infs", exp_infs)], state_steps, 2)


def nadam(params: Sequence[FloatArray], grads: BufferList, exp_avgs: BufferList,
          exp_avg_sqs: BufferList, mu_products: list[float], state_steps: StepList, *,
          lr: float, beta1: float, beta2: float, eps: float, weight_decay: float = 0.0,
          momentum_decay: float = 4e-3, decoupled_weight_decay: bool = False,
          maximize: bool = False) -> None:
    """Fused NAdam step over lists (see :class:`fusedoptim.NAdam` for the rule).

    ``mu_products`` is a list of floats (1.0 before a param's first step), updated in place
    for every param that has a grad, like ``state_steps``.
    """
    hyper = check_nadam(lr, beta1, beta2, eps, weight_decay, momentum_decay,
                        decoupled_weight_decay, maximize)
    _fused_step("nadam", nadam_scalars, hyper, params, grads,
                [("exp_avgs", exp_avgs), ("exp_avg_sqs", exp_avg_sqs)], state_steps, 2,
                scalar_lists=[("mu_products", mu_products)])


def radam(params: Sequence[FloatArray], grads: BufferList, exp_avgs: BufferList,
          exp_avg_sqs: BufferList, state_steps: StepList, *, lr: float, beta1: float,
          beta2: float, eps: float, weight_decay: float = 0.0,
          decoupled_weight_decay: bool = False, maximize: bool = False) -> None:
    """Fused RAdam step over lists (see :class:`fusedoptim.RAdam` for the rule)."""
    hyper = check_radam(lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay, maximize)
    _fused_step("radam", radam_scalars, hyper, params, grads,
                [("exp_avgs", exp_avgs), ("exp_avg_sqs", exp_avg_sqs)], state_steps, 2)


def lion(params: Sequence[FloatArray], grads: BufferList, exp_avgs: BufferList,
         state_steps: StepList, *, lr: float, beta1: float, beta2: float,
         weight_decay: float = 0.0, maximize: bool = False) -> None:
    """Fused Lion step over lists (see :class:`fusedoptim.Lion` for the rule)."""
    hyper = check_lion(lr, beta1, beta2, weight_decay, maximize)
    _fused_step("lion", lion_scalars, hyper, params, grads, [("exp_avgs", exp_avgs)],
                state_steps, 1)


def rprop(params: Sequence[FloatArray], grads: BufferList, prevs: BufferList,
          step_sizes: BufferList, state_steps: StepList, *, step_size_min: float,
          step_size_max: float, etaminus: float, etaplus: float,
          maximize: bool = False) -> None:
    """Fused Rprop step over lists (see :class:`fusedoptim.Rprop` for the rule).

    As in torch, ``step_sizes`` are state: start them at the initial step size,
    ``np.full_like(param, lr)``; ``prevs`` start at zero.
    """
    hyper = check_rprop(etaminus, etaplus, step_size_min, step_size_max, maximize)
    _fused_step("rprop", rprop_scalars, hyper, params, grads,
                [("prevs", prevs), ("step_sizes", step_sizes)], state_steps, 2,
                init_hints={"step_sizes": "np.full_like(param, lr)"})


def asgd(params: Sequence[FloatArray], grads: BufferList, axs: BufferList, mus: list[float],
         etas: list[float], state_steps: StepList, *, lr: float, lambd: float, alpha: float,
         t0: float, weight_decay: float = 0.0, maximize: bool = False) -> None:
    """Fused ASGD step over lists (see :class:`fusedoptim.ASGD` for the rule).

    ``mus`` and ``etas`` are lists of floats (1.0 and lr before a param's first step),
    updated in place for every param that has a grad, like ``state_steps``.
    """
    hyper = check_asgd(lr, lambd, alpha, t0, weight_decay, maximize)
    _fused_step("asgd", asgd_scalars, hyper, params, grads, [("axs", axs)], state_steps, 1,
                scalar_lists=[("mus", mus), ("etas", etas)])


def sgd(params: Sequence[FloatArray], grads: BufferList,
        momentum_buffer_list: BufferList | None, state_steps: StepList | None = None, *,
        lr: float, momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0,
        nesterov: bool = False, maximize: bool = False,
        momentum_style: str = "torch") -> None:
    """Fused SGD step over lists (see :class:`fusedoptim.SGD` for the rule).

    As in torch.optim.sgd, when momentum != 0 ``momentum_buffer_list`` holds an array or None
    per param, and a None entry of a param with a grad is created here (torch's form starts it
    at the gradient, the "ema" form at 0) and stored in the list. It is not used when
    momentum == 0. SGD does not use step counts: ``state_steps`` is optional, and its entries
    are incremented when given.
    """
    hyper = check_sgd(lr, momentum, dampening, weight_decay, nesterov, maximize,
                      momentum_style)
    if hyper[1] != 0.0:
        _fused_step("sgd", sgd_scalars, hyper, params, grads,
                    [("momentum_buffer_list", momentum_buffer_list)], state_steps, 1,
                    create=("momentum_buffer_list",))
    else:
        _fused_step("sgd", sgd_scalars, hyper, params, grads,
                    [("momentum_buffer_list", None)], state_steps, 0)


def adagrad(params: Sequence[FloatArray], grads: BufferList, state_sums: BufferList,
            state_steps: StepList, *, lr: float, lr_decay: float = 0.0,
            weight_decay: float = 0.0, eps: float = 1e-10, maximize: bool = False) -> None:
    """Fused Adagrad step over lists (see :class:`fusedoptim.Adagrad` for the rule).

    ``state_sums`` start at initial_accumulator_value (e.g. ``np.full_like(p, 0.1)``).
    """
    hyper = check_adagrad(lr, lr_decay, weight_decay, eps, maximize)
    _fused_step("adagrad", adagrad_scalars, hyper, params, grads, [("state_sums", state_sums)],
                state_steps, 1)


def rmsprop(params: Sequence[FloatArray], grads: BufferList, square_avgs: BufferList,
            grad_avgs: BufferList | None, momentum_buffer_list: BufferList | None,
            state_steps: StepList, *, lr: float, alpha: float, eps: float,
            weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False,
            maximize: bool = False, bias_correction: bool = False) -> None:
    """Fused RMSprop step over lists (see :class:`fusedoptim.RMSprop` for the rule).

    ``grad_avgs`` is used only when centered, ``momentum_buffer_list`` only when
    momentum > 0; either may be None otherwise.
    """
    hyper = check_rmsprop(lr, alpha, eps, weight_decay, momentum, centered, maximize,
                          bias_correction)
    in_use = (True, hyper[5], hyper[4] > 0.0)     # square_avg, grad_avg, momentum_buffer
    lists = [(name, lst if used else None) for name, lst, used in zip(
        ("square_avgs", "grad_avgs", "momentum_buffer_list"),
        (square_avgs, grad_avgs, momentum_buffer_list), in_use)]
    _fused_step("rmsprop", rmsprop_scalars, hyper, params, grads, lists, state_steps,
                tuple(name for (name, _), used in zip(lists, in_use) if used))


def adadelta(params: Sequence[FloatArray], grads: BufferList, square_avgs: BufferList,
             acc_deltas: BufferList, state_steps: StepList, *, lr: float, rho: float,
             eps: float, weight_decay: float = 0.0, maximize: bool = False) -> None:
    """Fused Adadelta step over lists (see :class:`fusedoptim.Adadelta` for the rule)."""
    hyper = check_adadelta(lr, rho, eps, weight_decay, maximize)
    _fused_step("adadelta", adadelta_scalars, hyper, params, grads,
                [("square_avgs", square_avgs), ("acc_deltas", acc_deltas)], state_steps, 2)


def lamb(params: Sequence[FloatArray], grads: BufferList, exp_avgs: BufferList,
         exp_avg_sqs: BufferList, state_steps: StepList, *, lr: float, beta1: float,
         beta2: float, eps: float, weight_decay: float = 0.0, clamp_value: float = 10.0,
         bias_correction: bool = True, maximize: bool = False) -> None:
    """Fused LAMB step over lists (see :class:`fusedoptim.LAMB` for the rule): two passes,
    the trust ratio of each param computed from its own norms."""
    hyper = check_lamb(lr, beta1, beta2, eps, weight_decay, clamp_value, bias_correction,
                       maximize)
    _fused_step("lamb", lamb_scalars, hyper, params, grads,
                [("exp_avgs", exp_avgs), ("exp_avg_sqs", exp_avg_sqs)], state_steps, 2,
                run=lambda plan: lamb_run(plan, hyper[0], hyper[5]))


def lars(params: Sequence[FloatArray], grads: BufferList,
         momentum_buffer_list: BufferList | None, state_steps: StepList | None = None, *,
         lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
         trust_coefficient: float = 0.001, eps: float = 1e-8, nesterov: bool = False,
         maximize: bool = False) -> None:
    """Fused LARS step over lists (see :class:`fusedoptim.LARS` for the rule).

    When momentum != 0, ``momentum_buffer_list`` holds a buffer per param, started at zero
    (``np.zeros_like(param)``); it is not used when momentum == 0. The update does not depend
    on step counts: ``state_steps`` is optional, and its entries are incremented when given.
    """
    hyper = check_lars(lr, momentum, weight_decay, trust_coefficient, eps, nesterov, maximize)
    run = lambda plan: lars_run(plan, hyper[2], hyper[3], hyper[4])
    if hyper[1] != 0.0:
        _fused_step("lars", lars_scalars, hyper, params, grads,
                    [("momentum_buffer_list", momentum_buffer_list)], state_steps, 1, run=run)
    else:
        _fused_step("lars", lars_scalars, hyper, params, grads,
                    [("momentum_buffer_list", None)], state_steps, 0, run=run)
