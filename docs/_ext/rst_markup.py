"""Griffe extension: read the few reStructuredText habits of fusedoptim's docstrings as Markdown.

The docstrings are Google style, but some carry three reST/Sphinx leftovers that Markdown would
show verbatim. This rewrites them in the docstring text griffe hands to mkdocstrings, at build
time only (the sources are not changed):

* ``:class:`fusedoptim.Adam```, ``:meth:`~LRScheduler.step``` and the other Sphinx roles become
  autorefs cross-references to the object, resolved the way Python resolves the name from
  where the docstring is (``~`` shows only the last component). A role naming nothing griffe
  knows is reported as a warning, so ``mkdocs build --strict`` fails on it, as it fails on a
  reference to an object the site does not render.
* ``text::`` before an indented block (reST's literal-block marker) becomes ``text:``; the
  indented block is already a code block in Markdown.
* ``Args (torch.optim.Adam's names and defaults):`` becomes a sentence plus a plain ``Args:``
  header, so the Google parser renders the parameters as a table.
"""

from __future__ import annotations

import re

import griffe

_logger = griffe.get_logger("fusedoptim_docs.rst_markup")

_ROLE = re.compile(r":(?:py:)?(class|func|meth|attr|mod|data|exc|obj):`(~?)([\w.]+)`")
_LITERAL_MARKER = re.compile(r"(?<=\S)::$", re.MULTILINE)
_LONE_MARKER = re.compile(r"^[ \t]*::[ \t]*$\n?", re.MULTILINE)
_ARGS_NOTE = re.compile(r"^Args \((.+)\):$", re.MULTILINE)


def _lookup(collection, path: str):
    try:
        return collection.get_member(path)
    except (KeyError, ValueError, AttributeError):
        return None


def _resolve(obj, name: str, collection) -> str | None:
    """The canonical path of `name` as seen from `obj`, or None."""
    head, _, rest = name.partition(".")
    found = None
    scope = obj
    while scope is not None and found is None:      # the name from obj's scope outwards
        if head in scope.members:
            found = scope.members[head]
        scope = scope.parent
    if found is not None and rest:
        found = _lookup_in(found, rest)
    if found is None:                                  # an absolute dotted path
        found = _lookup(collection, name)
    if found is None:
        return None
    try:
        return found.final_target.path if found.is_alias else found.path
    except griffe.AliasResolutionError:
        return found.target_path if found.is_alias else found.path


def _lookup_in(obj, dotted: str):
    for part in dotted.split("."):
        try:
            obj = obj.members[part]
        except (KeyError, griffe.AliasResolutionError):
            return None
    return obj


class RstMarkup(griffe.Extension):
    """Rewrite roles, literal-block markers and ``Args (note):`` headers (see the module)."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs) -> None:
        seen = set()
        self._walk(pkg, loader.modules_collection, seen)

    def _walk(self, obj, collection, seen) -> None:
        if obj.is_alias or id(obj) in seen:
            return
        seen.add(id(obj))
        if obj.docstring is not None:
            obj.docstring.value = self._rewrite(obj, obj.docstring.value, collection)
        for member in list(obj.members.values()):
            self._walk(member, collection, seen)

    def _rewrite(self, obj, text: str, collection) -> str:
        def role(match: re.Match) -> str:
            kind, short, name = match.groups()
            shown = name.rsplit(".", 1)[-1] if short else name
            target = _resolve(obj, name, collection)
            if target is None:
                _logger.warning(f"{obj.relative_filepath}:{obj.docstring.lineno}: "
                                f"{obj.path}: cannot resolve :{kind}:`{short}{name}`")
                return f"`{shown}`"
            return f"[`{shown}`][{target}]"

        text = _ROLE.sub(role, text)
        text = _LONE_MARKER.sub("", text)
        text = _LITERAL_MARKER.sub(":", text)
        return _ARGS_NOTE.sub(lambda m: f"Arguments: {m.group(1)}.\n\nArgs:", text)
