"""Functional API: one fused, in-place step over lists of arrays, for frameworks to embed.

Each function takes the params, their grads, their state buffers and their step counts as
parallel lists, like ``torch.optim.functional``, and updates all of them in place in one
GIL-free call. ``state_steps`` is a list of ints (or an int64 array): each entry whose param has
a grad is incremented, as torch does. Per-tensor scalar state (NAdam's ``mu_products``,
ASGD's ``mus`` and ``etas``) is passed the same way, as lists of floats updated in place.
``fusedoptim.reference`` has the same functions in plain NumPy.

There is one function per optimizer spec (:mod:`fusedoptim._spec`), generated from it when
this module is imported: named after the spec, its positional lists are the spec's state
slots, then its scalar state, then ``state_steps``; its keyword arguments are the spec's
hyperparameter fields with their defaults. Its docstring is the spec's.
"""

from __future__ import annotations

import __future__
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _kernels, _spec
from . import _validation as v
from ._layout import check_param_list
from . import optim  # noqa: F401  imported for its side effect: every spec is registered
from .optim.sparse_adam import sparse_adam as sparse_adam

if TYPE_CHECKING:
    from ._spec import OptSpec
    from ._typing import BufferList, FloatArray, Hyper, StepList


def _fused_step(spec: OptSpec[Any], hyper: Hyper, params: Sequence[FloatArray],
                grads: BufferList, lists: Sequence[BufferList | None],
                scalar_lists: Sequence[list[float]], state_steps: StepList | None) -> None:
    """Validate every list, then run the spec's step once over all params.

    `lists` are the caller's state lists, one per slot of the spec. A slot this
    configuration uses must have a buffer for every param that has a grad; a list for an
    unused slot is not looked at (unless the slot says ``check_unused``). In the list of a
    ``fresh`` slot, a None entry of a param with a grad is not an error: a zero buffer is
    created and stored into the list (as torch's functional SGD does with momentum
    buffers), and that param's scalars come from ``scalars(step, *hyper, fresh=True)``.

    `scalar_lists` (one float per param each) are the scalar state: ``scalars(step,
    *current, *hyper)`` gives ``(kernel scalars, next values)`` and the lists are updated
    in place. ``state_steps`` may be None when the spec says ``optional_steps`` (then
    nothing is counted). The spec's ``run(plan, hyper)``, when it has one, runs the step on
    the bound plan whose scalars are set, instead of one pass of its kernel (LAMB and LARS:
    a reduction pass, trust ratios, then the update).
    """
    state_lists: list[tuple[str, BufferList | None]] = []
    required: list[str] = []
    create: list[str] = []
    hints: dict[str, str] = {}
    for slot, lst in zip(spec.state, lists):
        used = slot.used is None or bool(getattr(hyper, slot.used))
        state_lists.append((slot.list_name, lst if used or slot.check_unused else None))
        if used:
            required.append(slot.list_name)
            if slot.fresh:
                create.append(slot.list_name)
        if slot.hint is not None:
            hints[slot.list_name] = slot.hint
    named_scalars = [(s.list_name, lst) for s, lst in zip(spec.scalar_state, scalar_lists)]
    args = spec.args(hyper)
    scalars_fn = spec.scalars
    n = len(params) if isinstance(params, (list, tuple)) else -1
    if n < 1:
        raise ValueError(f"params must be a non-empty list of arrays, got {params!r:.60}")
    lists_in: list[tuple[str, Any]] = [("grads", grads), ("state_steps", state_steps),
                                       *state_lists, *named_scalars]
    for name, lst in lists_in:
        if lst is None:
            continue
        if not isinstance(lst, (list, tuple, np.ndarray)) or len(lst) != n:
            raise ValueError(f"{name} must be a list with one entry per param ({n}), got "
                             f"{type(lst).__name__} of length "
                             f"{len(lst) if hasattr(lst, '__len__') else 'n/a'}")
    check_param_list(params)
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
    if named_scalars:
        sstate = [[0.0] * len(named_scalars) for _ in range(n)]
        for j, (name, values) in enumerate(named_scalars):
            for i in range(n):
                if values[i] is None and grads[i] is None:
                    continue
                sstate[i][j] = v.scalar_state(values[i], f"{name}[{i}]")
    labels = [f"grads[{i}]" for i in range(n)]
    plan = _kernels.Plan(list(params), state, len(state_lists),
                         len(_kernels.SCALARS[spec.kernel]), labels, steps, sstate)
    plan.bind(list(grads))
    names = [name for name, _ in state_lists]
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
    if named_scalars:
        for k, (s, *current) in enumerate(plan.group_active()):
            row, new_state = scalars_fn(s, *current, *args)
            plan.set_group(k, row, tuple(new_state))
    else:
        for s in plan.distinct_active_steps():
            plan.set_scalars(scalars_fn(s, *args), s)
    for lst, i, buf in created:
        lst[i] = buf
        s = int(plan.steps_array[i])
        plan.set_scalars(scalars_fn(s, *args, fresh=True), s, i)
    if spec.run is None:
        plan.run(_kernels.KERNEL_IDS[spec.kernel])
    else:
        spec.run(plan, hyper)
    if keep_steps:
        new_steps = plan.steps_array
        for i in range(n):
            state_steps[i] = int(new_steps[i])
    for j, (name, values) in enumerate(named_scalars):
        for i in range(n):
            if grads[i] is not None:
                values[i] = float(plan.sstate_array[i, j])


# -- one entry per spec -------------------------------------------------------------------------

def _entry_source(spec: OptSpec[Any]) -> str:
    """The source of `spec`'s functional entry: a plain def, so that calling it binds and
    checks arguments as any Python function does, and its signature is the real one."""
    lists = [f"{s.list_name}: BufferList{' | None' if s.used else ''}" for s in spec.state]
    lists += [f"{s.list_name}: list[float]" for s in spec.scalar_state]
    steps = ("state_steps: StepList | None = None" if spec.optional_steps
             else "state_steps: StepList")
    keywords = [f"{f}: {spec.types[spec.fields.index(f)]}"
                + (f" = _defaults[{f!r}]" if f in spec.defaults else "")
                for f in spec.functional_fields]
    fields = "".join(f"_fixed[{f!r}], " if f in spec.fixed else f"{f}, "
                     for f in spec.kernel_fields)

    def tup(names: list[str]) -> str:
        return f"({', '.join(names)},)" if names else "()"
    return (f"def {spec.name}(params: Sequence[FloatArray], grads: BufferList, "
            f"{''.join(x + ', ' for x in lists)}{steps}, *, {', '.join(keywords)}) -> None:\n"
            f"    _fused_step(_spec, _spec.check_kernel_fields(({fields})), params, grads, "
            f"{tup([s.list_name for s in spec.state])}, "
            f"{tup([s.list_name for s in spec.scalar_state])}, state_steps)\n")


def _make_entry(spec: OptSpec[Any]) -> Callable[..., None]:
    """`spec`'s functional entry (see the module docstring)."""
    namespace: dict[str, Any] = {"_fused_step": _fused_step, "_spec": spec,
                                 "_defaults": spec.defaults, "_fixed": spec.fixed}
    code = compile(_entry_source(spec), f"<fusedoptim.functional.{spec.name}>", "exec",
                   flags=__future__.annotations.compiler_flag, dont_inherit=True)
    exec(code, namespace)
    fn: Callable[..., None] = namespace[spec.name]
    fn.__module__ = __name__
    fn.__doc__ = spec.doc
    return fn


def __getattr__(name: str) -> Callable[..., None]:
    """The entry of a spec registered after this module was imported (the others are made
    below). Also tells type checkers that ``fusedoptim.functional.<name>`` exists: the
    entries are made at run time, so they are typed ``Callable[..., None]``."""
    spec = _spec.get(name)
    if spec is None or spec.cls is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    fn = globals()[name] = _make_entry(spec)
    return fn


for _s in _spec.registered():
    globals()[_s.name] = _make_entry(_s)
del _s


# Adafactor's state is not shaped like its params (row and column factors): its entry, with
# torch's functional signature, is written by hand next to its class.
from .optim.adafactor import adafactor as adafactor  # noqa: E402
