"""Optimizer specs: one declaration per optimizer, from which the rest is derived.

An optimizer is three things: a chunk kernel (``cython_kernels/<family>.pxi``), one module in
``fusedoptim/optim/`` holding its :class:`OptSpec`, its scalars function and its class, and one
NumPy function in ``fusedoptim/reference.py``. The spec says, once:

* ``name``: the functional entry's name (``fo.functional.<name>``, and the reference function's);
  ``kernel``: the registered chunk kernel (default: ``name``);
* ``hyper``: a NamedTuple of the hyperparameters. Its fields, in order, are the scalars
  function's arguments and the functional entry's keyword arguments. Each is annotated
  ``Annotated[type, validator]``, where ``validator(value, label)`` returns the canonical value
  or raises (see ``fusedoptim._validation``); a field's default is its functional default
  (no default: a required keyword). ``pairs`` groups two (or more) adjacent fields under one
  class argument (``betas`` -> ``beta1``, ``beta2``, checked as ``betas[0]``, ``betas[1]``;
  AdEMAMix's ``betas`` holds three); ``class_only``
  names trailing fields the class has but the functional call does not (they only set
  initial state, e.g. Rprop's ``lr``); ``relate(hyper, raw)`` checks what involves several
  fields, after each was checked alone (``raw`` holds the caller's values, for messages);
* ``state``: the per-param buffers (:class:`Slot`), then ``scalar_state``: per-param floats kept
  in double (:class:`ScalarSlot`), both in the kernel's order;
* ``scalars(step, *scalar_state, *hyper)``: the kernel's scalars for one step count, in double
  (with scalar state: ``(scalars, next scalar state)``);
* optional: ``run(plan, hyper)`` when a step is more than one kernel pass (LAMB, LARS),
  ``per_tensor`` when a step needs each tensor's own norms (no flat stepping), and
  ``optional_steps`` when the functional call may omit ``state_steps``.

A class binds its spec with ``spec = ...`` (:class:`fusedoptim.Optimizer` reads it; that also
registers it here). :mod:`fusedoptim.optim` imports every module of its package,
:mod:`fusedoptim.functional` generates an entry per registered spec and
:mod:`fusedoptim.reference` pairs each spec's class with its function of the same name. A spec
is checked when it is made (its validators accept its defaults, its scalars function takes its
fields in order, its kernel exists): a bad spec fails at import, not in a user's step.
"""

from __future__ import annotations

import importlib
import inspect
import keyword
import pkgutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar, get_args, get_origin, \
    get_type_hints

from . import _kernels
from . import _validation as _v

#: A spec's hyperparameter NamedTuple.
H = TypeVar("H", bound=tuple[Any, ...])

#: How a validator is called: ``validator(value, label)`` -> the canonical value, or raises.
Validator = Callable[[Any, str], Any]

# Names a functional entry uses for itself: no list or field may take them.
_RESERVED = frozenset({"params", "grads", "state_steps"})


@dataclass(frozen=True)
class Slot:
    """One state buffer per param (same shape and dtype), a column of the kernel's table.

    Attributes:
        name: its key in ``opt.state[i]`` and checkpoints (torch's name: ``exp_avg``).
        list_name: the functional entry's positional argument (torch's: ``exp_avgs``).
        used: a hyperparameter field whose truth puts the slot in use (``"amsgrad"``); None:
            always. An unused slot gets no buffer, and its functional list may be None.
        init: what a new buffer is filled with: a number, or a hyperparameter field's name.
        fresh: a new buffer's first update is not the general update on the ``init`` fill
            (torch's SGD starts its momentum buffer at the gradient): the scalars function
            then takes ``fresh=True`` for it, and the functional call creates the buffer for a
            None entry, as torch's functional SGD does.
        hint: how the functional call's error for a missing buffer says to start one
            (default ``np.zeros_like(param)``).
        check_unused: the functional call checks a list given for this slot even when it is
            not in use (Adam's ``max_exp_avg_sqs``); otherwise such a list is not looked at.
    """

    name: str
    list_name: str
    used: str | None = None
    init: float | str = 0.0
    fresh: bool = False
    hint: str | None = None
    check_unused: bool = False


@dataclass(frozen=True)
class ScalarSlot:
    """A float per param kept in double (NAdam's ``mu_product``): in ``opt.state[i]`` and
    checkpoints as ``name``, in the functional call as the list ``list_name``, updated in
    place. ``init``: its value before the param's first step (a number or a field's name)."""

    name: str
    list_name: str
    init: float | str = 0.0


class OptSpec(Generic[H]):
    """An optimizer's declaration (see the module docstring). Checked when made: a bad spec
    raises TypeError or ValueError naming the spec and what is wrong."""

    name: str
    kernel: str
    hyper: type[H]
    scalars: Callable[..., Any]
    state: tuple[Slot, ...]
    scalar_state: tuple[ScalarSlot, ...]
    pairs: dict[str, tuple[str, ...]]
    class_only: tuple[str, ...]
    relate: Callable[[H, H], H] | None
    run: Callable[[_kernels.Plan, H], None] | None
    per_tensor: bool
    optional_steps: bool
    doc: str
    fixed: dict[str, Any]
    #: every field, in order; the first ``len(kernel_fields)`` go to the scalars function
    fields: tuple[str, ...]
    kernel_fields: tuple[str, ...]
    #: the functional entry's keyword arguments: kernel_fields less the variant's fixed ones
    functional_fields: tuple[str, ...]
    #: functional defaults of the fields that have one
    defaults: dict[str, Any]
    #: each field's type name (``float``, ``bool``, ``str``) and validator, in field order
    types: tuple[str, ...]
    validators: tuple[Validator, ...]
    labels: tuple[str, ...]
    #: the class's hyperparameter keys in order: fields, with each pair as its one key
    group_keys: tuple[str, ...]
    slot_names: tuple[str, ...]
    scalar_names: tuple[str, ...]
    fresh: bool
    #: the class bound to this spec (set when the class is defined)
    cls: type[Any] | None
    #: for a variant, the spec it was made from (its reference function takes every field)
    base: OptSpec[H] | None

    def __init__(self, name: str, hyper: type[H], scalars: Callable[..., Any], *,
                 kernel: str | None = None, state: Sequence[Slot] = (),
                 scalar_state: Sequence[ScalarSlot] = (),
                 pairs: Mapping[str, tuple[str, ...]] | None = None,
                 class_only: Sequence[str] = (), relate: Callable[[H, H], H] | None = None,
                 run: Callable[[_kernels.Plan, H], None] | None = None,
                 per_tensor: bool = False, optional_steps: bool = False, doc: str = "",
                 fixed: Mapping[str, Any] | None = None,
                 defaults: Mapping[str, Any] | None = None) -> None:
        self.name = name
        self.kernel = name if kernel is None else kernel
        self.hyper = hyper
        self.scalars = scalars
        self.state = tuple(state)
        self.scalar_state = tuple(scalar_state)
        self.pairs = dict(pairs or {})
        self.class_only = tuple(class_only)
        self.relate = relate
        self.run = run
        self.per_tensor = per_tensor
        self.optional_steps = optional_steps
        self.doc = inspect.cleandoc(doc)
        self.fixed = dict(fixed or {})
        self.cls = None
        self.base = None
        self._derive(dict(defaults or {}))
        self._check()

    def variant(self, name: str, *, fixed: Mapping[str, Any],
                defaults: Mapping[str, Any] | None = None, doc: str = "") -> OptSpec[H]:
        """The same optimizer with some fields fixed (not arguments of its functional entry)
        and other functional defaults: AdamW is Adam with decoupled_weight_decay=True."""
        spec = OptSpec(name, self.hyper, self.scalars, kernel=self.kernel, state=self.state,
                       scalar_state=self.scalar_state, pairs=self.pairs,
                       class_only=self.class_only, relate=self.relate, run=self.run,
                       per_tensor=self.per_tensor, optional_steps=self.optional_steps,
                       doc=doc, fixed={**self.fixed, **fixed}, defaults=defaults)
        spec.base = self if self.base is None else self.base
        return spec

    def __repr__(self) -> str:
        return f"OptSpec({self.name!r}, kernel={self.kernel!r}, fields={self.fields})"

    # -- derived tables ---------------------------------------------------------------------
    def _fail(self, exc: type[Exception], what: str) -> Exception:
        return exc(f"OptSpec {self.name!r}: {what}")

    def _derive(self, defaults: dict[str, Any]) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier() or \
                keyword.iskeyword(self.name):
            raise self._fail(ValueError, "the name must be a Python identifier")
        fields = getattr(self.hyper, "_fields", None)
        if not isinstance(self.hyper, type) or not issubclass(self.hyper, tuple) or not fields:
            raise self._fail(TypeError, f"hyper must be a NamedTuple class with at least one "
                             f"field, got {self.hyper!r}")
        self.fields = tuple(fields)
        # NamedTuple._make: a tuple from an iterable, without argument binding (hot path).
        self._make: Callable[[Iterable[Any]], H] = getattr(self.hyper, "_make")
        try:
            hints = get_type_hints(self.hyper, include_extras=True)
        except Exception as exc:    # an annotation that does not evaluate in its module
            raise self._fail(TypeError, f"the annotations of {self.hyper.__name__} do not "
                             f"evaluate: {exc!r}") from None
        types, validators = [], []
        for f in self.fields:
            hint = hints.get(f)
            meta = get_args(hint)[1:] if get_origin(hint) is Annotated else ()
            if len(meta) != 1 or not callable(meta[0]):
                raise self._fail(TypeError, f"field {f!r} must be annotated "
                                 f"Annotated[type, validator] with one callable validator, "
                                 f"got {hint!r}")
            base = get_args(hint)[0]
            # a parameterized type (tuple[float, float, float]) by its full name, as the
            # docs build reads it from the source; a plain one by its name
            types.append(str(base) if get_origin(base) is not None
                         else getattr(base, "__name__", str(base)))
            validators.append(meta[0])
        self.types, self.validators = tuple(types), tuple(validators)
        labels = dict.fromkeys(self.fields, "")
        for key, members in self.pairs.items():
            if (len(members) < 2 or any(m not in labels for m in members)
                    or [self.fields.index(m) for m in members] != list(range(
                        self.fields.index(members[0]), self.fields.index(members[0])
                        + len(members)))):
                raise self._fail(ValueError, f"pairs[{key!r}] must name two adjacent "
                                 f"fields (or more, in order), got {members!r}")
            for k, m in enumerate(members):
                labels[m] = f"{key}[{k}]"
        self.labels = tuple(labels[f] or f for f in self.fields)
        keys: list[str] = []
        firsts = {members[0]: key for key, members in self.pairs.items()}
        rest = {m for members in self.pairs.values() for m in members[1:]}
        for f in self.fields:
            if f in firsts:
                keys.append(firsts[f])
            elif f not in rest:
                keys.append(f)
        self.group_keys = tuple(keys)
        n = len(self.fields) - len(self.class_only)
        if self.fields[n:] != self.class_only:
            raise self._fail(ValueError, f"class_only fields {self.class_only} must be the "
                             f"last fields of {self.hyper.__name__}, got {self.fields}")
        self.kernel_fields = self.fields[:n]
        self.functional_fields = tuple(f for f in self.kernel_fields if f not in self.fixed)
        unknown = set(defaults) - set(self.kernel_fields)
        if unknown:
            raise self._fail(ValueError, f"defaults for unknown fields {sorted(unknown)}")
        merged = {**getattr(self.hyper, "_field_defaults", {}), **defaults}
        self.defaults = {f: merged[f] for f in self.functional_fields if f in merged}
        self.slot_names = tuple(s.name for s in self.state)
        self.scalar_names = tuple(s.name for s in self.scalar_state)
        self.fresh = any(s.fresh for s in self.state)
        self._nk = n if self.class_only else -1
        field_defaults = getattr(self.hyper, "_field_defaults", {})
        self._class_only_defaults: tuple[Any, ...] | None = (
            tuple(field_defaults[f] for f in self.class_only)
            if all(f in field_defaults for f in self.class_only) else None)

    def _check(self) -> None:
        if self.kernel not in _kernels.KERNEL_IDS:
            raise self._fail(ValueError, f"kernel {self.kernel!r} is not registered; the "
                             f"compiled kernels are {sorted(_kernels.KERNEL_IDS)}")
        for f in self.fixed:
            if f not in self.kernel_fields:
                raise self._fail(ValueError, f"fixed field {f!r} is not a field")
        for f, default in {**getattr(self.hyper, "_field_defaults", {}),
                           **self.defaults}.items():
            i = self.fields.index(f)
            try:
                ok = self.validators[i](default, self.labels[i]) == default
            except (TypeError, ValueError) as exc:
                raise self._fail(ValueError, f"the validator of {f!r} refuses its default "
                                 f"{default!r}: {exc}") from None
            if not ok:
                raise self._fail(ValueError, f"the validator of {f!r} does not return its "
                                 f"default {default!r} unchanged")
        names = [s.name for s in self.state] + [s.name for s in self.scalar_state] + ["step"]
        lists = [s.list_name for s in self.state] + [s.list_name for s in self.scalar_state]
        for kind, seen in (("state name", names), ("list name", lists)):
            if len(set(seen)) != len(seen):
                raise self._fail(ValueError, f"duplicate {kind} in {seen}")
        for lst in lists:
            if (not lst.isidentifier() or keyword.iskeyword(lst) or lst in _RESERVED
                    or lst in self.fields):
                raise self._fail(ValueError, f"list name {lst!r} must be an identifier other "
                                 f"than params, grads, state_steps and the fields")
        every: list[Slot | ScalarSlot] = [*self.state, *self.scalar_state]
        for s in every:
            used = getattr(s, "used", None)
            for ref in (used, s.init if isinstance(s.init, str) else None):
                if ref is not None and ref not in self.fields:
                    raise self._fail(ValueError, f"state {s.name!r} refers to {ref!r}, which "
                                     f"is not a field")
        self._check_scalars_signature()

    def _check_scalars_signature(self) -> None:
        """The scalars function takes (step, *scalar state, *kernel fields) in that order,
        and fresh= when a slot is fresh: it is called positionally on every step."""
        try:
            params = list(inspect.signature(self.scalars).parameters.values())
        except (TypeError, ValueError):
            raise self._fail(TypeError, f"scalars must be a Python function, got "
                             f"{self.scalars!r}") from None
        expected = ["step", *self.scalar_names, *self.kernel_fields]
        got = [p.name for p in params[:len(expected)]]
        rest = [p.name for p in params[len(expected):]]
        if got != expected or rest != (["fresh"] if self.fresh else []):
            raise self._fail(TypeError, f"scalars must take {expected}"
                             f"{' and fresh=' if self.fresh else ''} in this order, got "
                             f"{[p.name for p in params]}")

    # -- validation -------------------------------------------------------------------------
    def check(self, *args: Any, **kwargs: Any) -> H:
        """Validate hyperparameters given as the functional call gives them (the kernel
        fields, by position or name; class-only fields take their defaults); return them
        canonical. Raises TypeError/ValueError naming the argument and the bad value."""
        return self._validate(self.hyper(*args, **kwargs))

    def check_group(self, key: Sequence[Any]) -> H:
        """Validate a param group's values, ordered as ``group_keys`` (a pair as one value,
        e.g. ``betas``); return the canonical hyperparameters."""
        raw: list[Any] = []
        for k, value in zip(self.group_keys, key):
            if k in self.pairs:
                raw.extend(_v.group_of(value, k, len(self.pairs[k])))
            else:
                raw.append(value)
        return self._validate(self.hyper(*raw))

    def check_kernel_fields(self, values: tuple[Any, ...]) -> H:
        """check() for the functional entries, which run it on every call: the kernel
        fields' values by position, in order; the class-only fields take their defaults.
        No keyword binding and no intermediate tuple unless `relate` needs the raw values
        (measured: ~2 us less per call than check(**kwargs))."""
        if self._nk >= 0:
            if self._class_only_defaults is None:
                return self.check(*values)     # a class-only field without a default: refused
            values = values + self._class_only_defaults
        hyper = self._make([check(value, label) for check, value, label
                            in zip(self.validators, values, self.labels)])
        return hyper if self.relate is None else self.relate(hyper, self._make(values))

    def _validate(self, raw: H) -> H:
        hyper = self._make([check(value, label) for check, value, label
                            in zip(self.validators, raw, self.labels)])
        return hyper if self.relate is None else self.relate(hyper, raw)

    # -- what the optimizer and the functional call derive from a validated hyper ------------
    def args(self, hyper: H) -> tuple[Any, ...]:
        """The scalars function's hyperparameter arguments: the kernel fields."""
        return hyper if self._nk < 0 else hyper[:self._nk]

    def slots_in_use(self, hyper: H) -> tuple[str, ...]:
        return tuple(s.name for s in self.state if s.used is None or getattr(hyper, s.used))

    def initial(self, name: str, hyper: H) -> float:
        """What state `name` (a slot or scalar slot) starts at."""
        every: list[Slot | ScalarSlot] = [*self.state, *self.scalar_state]
        for s in every:
            if s.name == name:
                return float(getattr(hyper, s.init) if isinstance(s.init, str) else s.init)
        raise KeyError(name)

    def functional_kwargs(self, hyper: H) -> dict[str, Any]:
        """The functional (and reference) call's keyword arguments for `hyper`."""
        return {f: getattr(hyper, f) for f in self.functional_fields}


# -- the registry -----------------------------------------------------------------------------

_REGISTRY: dict[str, OptSpec[Any]] = {}


def register(spec: OptSpec[Any], cls: type[Any]) -> None:
    """Bind `spec` to its class and register it (Optimizer.__init_subclass__ calls this).
    A name belongs to one class (re-running its module, as a reload does, rebinds it)."""
    old = _REGISTRY.get(spec.name)
    bound = old.cls if old is not None else spec.cls
    if bound is not None and (bound.__module__, bound.__qualname__) != (cls.__module__,
                                                                       cls.__qualname__):
        raise ValueError(f"OptSpec {spec.name!r} is already bound to {bound.__module__}."
                         f"{bound.__qualname__}; give {cls.__qualname__} a spec of its own "
                         f"(a new OptSpec, or OptSpec.variant)")
    spec.cls = cls
    _REGISTRY[spec.name] = spec


def unregister(name: str) -> None:
    """Forget a spec (for tests that define throwaway optimizers)."""
    _REGISTRY.pop(name, None)


def registered() -> list[OptSpec[Any]]:
    """Every registered spec, in registration order."""
    return list(_REGISTRY.values())


def get(name: str) -> OptSpec[Any] | None:
    return _REGISTRY.get(name)


def discover(package: str, path: Iterable[str]) -> dict[str, type[Any]]:
    """Import every module of `package` (so its classes register their specs); return the
    classes bound to registered specs that those modules define, by name."""
    for info in sorted(pkgutil.iter_modules(list(path)), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")
    return {spec.cls.__name__: spec.cls for spec in _REGISTRY.values()
            if spec.cls is not None and spec.cls.__module__.startswith(package + ".")}

