"""The docs build derives fusedoptim.functional's entries from the sources (the entries are made
at import, which the static docs build never does): docs/_ext/spec_entries.py must find the
same entries, signatures and docstrings as the package has at run time.

Reads the repository (skipped without the source tree beside the tests) and needs griffe
(the ``docs`` extra; skipped without it).
"""

import ast
import importlib.util
import inspect
import sys
from pathlib import Path

import pytest

import fusedoptim as fo
from fusedoptim import _spec

ROOT = Path(__file__).resolve().parent.parent
EXTENSION = ROOT / "docs" / "_ext" / "spec_entries.py"


@pytest.fixture(scope="module")
def static_entries():
    griffe = pytest.importorskip("griffe", reason="griffe is not installed (pip install .[docs])")
    if not EXTENSION.is_file() or not (ROOT / "src" / "fusedoptim" / "functional.py").is_file():
        pytest.skip(f"no source tree at {ROOT}: the check reads the repository")
    name = "_fusedoptim_docs_spec_entries"
    spec = importlib.util.spec_from_file_location(name, EXTENSION)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module          # its dataclass looks its module up while it is made
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    package = griffe.GriffeLoader(search_paths=[str(ROOT / "src")]).load("fusedoptim")
    return module.entries(package), module.classes(package)


def test_the_docs_see_every_entry_and_class(static_entries):
    static_entries, static_classes = static_entries
    assert set(static_entries) == {s.name for s in _spec.registered()}
    assert set(static_classes) == {s.cls.__name__ for s in _spec.registered()}
    # in the order of fusedoptim.optim.__all__, as the optimizers are documented
    order = [c.spec.name for c in (getattr(fo.optim, n) for n in fo.optim.__all__)
             if getattr(c, "spec", None) is not None]
    assert list(static_entries) == [n for n in order if n in static_entries]


def test_the_docs_see_each_entry_as_it_is(static_entries):
    static_entries, _ = static_entries
    for name, entry in static_entries.items():
        runtime = getattr(fo.functional, name)
        params = list(inspect.signature(runtime).parameters.values())
        declared = entry.positional + entry.keywords
        assert [p.name for p in params] == [n for n, _, _ in declared], name
        for p, (n, annotation, default) in zip(params, declared):
            assert p.annotation == annotation, (name, n)
            # a literal, or math.inf (Prodigy's growth_rate)
            expected = (inspect.Parameter.empty if default is None else
                        float("inf") if default == "math.inf" else ast.literal_eval(default))
            assert p.default == expected, (name, n)
        keyword_only = [p.name for p in params if p.kind is p.KEYWORD_ONLY]
        assert keyword_only == [n for n, _, _ in entry.keywords], name
        assert runtime.__doc__ == entry.doc, name
