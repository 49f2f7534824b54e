"""Griffe extension: document what fusedoptim makes at import from its optimizer specs.

``fusedoptim.functional`` generates one function per optimizer spec when it is imported
(see ``fusedoptim._spec``). The docs are built by static analysis, which never imports the
package (the kernels need not be built), so this extension makes the same functions from the
same declarations, read from the sources: every ``NAME = OptSpec(...)`` and
``NAME = BASE.variant(...)`` in ``fusedoptim/optim/*.py``, with the NamedTuple of
hyperparameters it names. The rules are those of ``fusedoptim.functional._entry_source``:

* positional: ``params``, ``grads``, one list per ``Slot`` (``| None`` when it has ``used``),
  one ``list[float]`` per ``ScalarSlot``, then ``state_steps`` (``= None`` when
  ``optional_steps``);
* keyword-only: the NamedTuple's fields (their type is ``Annotated``'s first argument, their
  default the field's), less ``class_only`` and a variant's ``fixed`` ones, with a variant's
  ``defaults``;
* the docstring: the spec's ``doc``.

Likewise, every class bound to a spec is exported by fusedoptim.optim and fusedoptim at run
time; one that is not imported there by name (a new optimizer, before its import line is
added for type checkers) is added here as an alias, so ``fusedoptim.<Class>`` resolves.

tests/test_docs_ext.py checks that what this finds matches the entries at run time, so the two
cannot drift apart unnoticed. Register it before rst_markup, which then rewrites the roles in
these docstrings like any other.
"""

from __future__ import annotations

import ast
import inspect
from dataclasses import dataclass, field
from typing import Any

import griffe

_logger = griffe.get_logger("fusedoptim_docs.spec_entries")

_FUNCTIONAL = "fusedoptim.functional"


@dataclass
class Entry:
    """A functional entry as the declarations describe it."""

    name: str
    positional: list[tuple[str, str, str | None]] = field(default_factory=list)
    keywords: list[tuple[str, str, str | None]] = field(default_factory=list)
    doc: str = ""
    lineno: int | None = None

    def signature(self) -> str:
        """``(params: Sequence[FloatArray], ..., *, lr: float, ...) -> None``, as
        ``inspect.signature`` prints the runtime entry (annotations unquoted)."""
        def show(params: list[tuple[str, str, str | None]]) -> list[str]:
            return [f"{n}: {a}" + ("" if d is None else f" = {d}") for n, a, d in params]
        return f"({', '.join(show(self.positional) + ['*'] + show(self.keywords))}) -> None"


def _value(node: ast.expr) -> Any:
    """A literal, or a Slot(...)/ScalarSlot(...) call as a dict of its arguments."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        names = {"Slot": ("name", "list_name"), "ScalarSlot": ("name", "list_name")}
        if node.func.id in names:
            out = dict(zip(names[node.func.id], (ast.literal_eval(a) for a in node.args)))
            out.update({k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg})
            out["kind"] = node.func.id
            return out
    if isinstance(node, (ast.Tuple, ast.List)):
        return [_value(e) for e in node.elts]
    return ast.literal_eval(node)


# The keyword arguments of OptSpec(...) and .variant(...) that shape a functional entry (the
# others name functions, which this does not need).
_SHAPING = ("state", "scalar_state", "class_only", "optional_steps", "doc", "fixed", "defaults")


def _arguments(call: griffe.ExprCall) -> tuple[list[str], dict[str, Any]]:
    """A call's positional arguments as source text, and the values of its keyword
    arguments that shape the entry."""
    positional, keywords = [], {}
    for arg in call.arguments:
        if isinstance(arg, griffe.ExprKeyword):
            if arg.name in _SHAPING:
                keywords[arg.name] = _value(ast.parse(str(arg.value), mode="eval").body)
        else:
            positional.append(str(arg))
    return positional, keywords


def _fields(module: griffe.Module, name: str) -> list[tuple[str, str, str | None]]:
    """The (name, type, default) of each field of NamedTuple `name` in `module`."""
    cls = module.members[name]
    out = []
    for attr in cls.attributes.values():
        ann = attr.annotation
        # Annotated[float, validator] -> float
        base = ann.slice.elements[0] if isinstance(ann, griffe.ExprSubscript) and \
            isinstance(ann.slice, griffe.ExprTuple) else ann
        out.append((attr.name, str(base), None if attr.value is None else str(attr.value)))
    return out


def _order(package: griffe.Module, found: dict[str, Entry],
           spec_of: dict[str, str]) -> dict[str, Entry]:
    """`found` in the order of fusedoptim.optim.__all__'s classes (the docs' order of the
    optimizers), then any other entry by name."""
    optim = package.members["optim"]
    names: list[str] = []
    exports = optim.members.get("__all__")
    if exports is not None and exports.value is not None:
        names = [spec_of[c] for c in ast.literal_eval(str(exports.value)) if c in spec_of]
    names += sorted(set(found) - set(names))
    return {n: found[n] for n in names if n in found}


def classes(package: griffe.Module) -> dict[str, griffe.Class]:
    """Every class in fusedoptim/optim/*.py that binds a spec (``spec = ...``), by name: what
    fusedoptim.optim exports at run time."""
    return {cls.name: cls for module in package.members["optim"].modules.values()
            for cls in module.classes.values()
            if not cls.is_alias and "spec" in cls.members}     # (not the imported Optimizer)


def entries(package: griffe.Module) -> dict[str, Entry]:
    """Every functional entry that fusedoptim/optim/*.py declares, by name."""
    found: dict[str, Entry] = {}
    spec_of: dict[str, str] = {}        # class name -> its entry's name
    for module in package.members["optim"].modules.values():
        specs: dict[str, tuple[list[str], dict[str, Any]]] = {}
        specs_by_attr: dict[str, str] = {}      # module attribute -> entry name
        for attr in module.attributes.values():
            call = attr.value
            if not isinstance(call, griffe.ExprCall):
                continue
            function = str(call.function)
            if function == "OptSpec":
                positional, keywords = _arguments(call)
                name = ast.literal_eval(positional[0])
                specs[attr.name] = (positional, keywords)
                fields = _fields(module, positional[1])
            elif function.endswith(".variant") and function[:-8] in specs:
                base_positional, base_keywords = specs[function[:-8]]
                positional, keywords = _arguments(call)
                name = ast.literal_eval(positional[0])
                fixed = keywords.get("fixed", {})
                defaults = keywords.get("defaults", {})
                keywords = {**base_keywords, **{k: v for k, v in keywords.items()
                                                if k not in ("fixed", "defaults")}}
                specs[attr.name] = (base_positional, keywords)
                fields = [(n, t, repr(defaults[n]) if n in defaults else d)
                          for n, t, d in _fields(module, base_positional[1]) if n not in fixed]
            else:
                continue
            entry = Entry(name, doc=inspect.cleandoc(keywords.get("doc", "")),
                          lineno=attr.lineno)
            entry.positional = [("params", "Sequence[FloatArray]", None),
                                ("grads", "BufferList", None)]
            for slot in keywords.get("state", []):
                entry.positional.append((slot["list_name"], "BufferList | None"
                                         if slot.get("used") else "BufferList", None))
            for slot in keywords.get("scalar_state", []):
                entry.positional.append((slot["list_name"], "list[float]", None))
            entry.positional.append(("state_steps", "StepList | None", "None")
                                    if keywords.get("optional_steps") else
                                    ("state_steps", "StepList", None))
            class_only = set(keywords.get("class_only", ()))
            entry.keywords = [f for f in fields if f[0] not in class_only]
            found[name] = entry
            specs_by_attr[attr.name] = name
        for cls in module.classes.values():
            bound = cls.members.get("spec")
            if bound is not None and str(bound.value) in specs_by_attr:
                spec_of[cls.name] = specs_by_attr[str(bound.value)]
    return _order(package, found, spec_of)


class SpecEntries(griffe.Extension):
    """Add each spec's functional entry to fusedoptim.functional, and each optimizer class
    that fusedoptim.optim does not import by name to fusedoptim.optim and fusedoptim (see
    the module)."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any
                   ) -> None:
        if pkg.path != "fusedoptim":
            return
        for name, cls in classes(pkg).items():
            for module in (pkg.members["optim"], pkg):
                if name not in module.members:
                    module.set_member(name, griffe.Alias(name, cls, parent=module))
        functional = pkg.members["functional"]
        # after the module's own members, in the optimizers' order (members_order: source)
        last = max((m.endlineno or 0 for m in functional.members.values()
                    if not m.is_alias), default=0)
        for k, (name, entry) in enumerate(entries(pkg).items()):
            if name in functional.members:
                _logger.warning(f"{_FUNCTIONAL}.{name} is defined in the source and by a spec")
                continue
            kind = griffe.ParameterKind
            parameters = [griffe.Parameter(n, annotation=a, default=d,
                                           kind=kind.positional_or_keyword)
                          for n, a, d in entry.positional]
            parameters += [griffe.Parameter(n, annotation=a, default=d, kind=kind.keyword_only)
                           for n, a, d in entry.keywords]
            function = griffe.Function(name, lineno=last + 1 + k, endlineno=last + 1 + k,
                                       parameters=griffe.Parameters(*parameters),
                                       returns="None")
            function.docstring = griffe.Docstring(entry.doc, lineno=last + 1 + k,
                                                  parent=function)
            functional.set_member(name, function)
