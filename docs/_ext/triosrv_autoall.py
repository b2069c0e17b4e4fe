"""``triosrv-autoall``: document every name in a module's ``__all__``, from the code.

``automodule`` with ``:members:`` documents the classes and functions a package
re-exports, but not its re-exported constants and type aliases: autodoc only sees data
assigned in the module it documents. This directive runs ``automodule`` and then adds a
``py:data`` entry for each remaining ``__all__`` name, with its value and the doc
comment (``#:``) or docstring that follows its assignment in the private module that
defines it. So the reference follows ``__all__`` as names are added; nothing is listed
by hand.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.pycode import ModuleAnalyzer
from sphinx.util.docutils import SphinxDirective


def _is_autodoc_member(value: Any) -> bool:
    # What automodule :members: documents for an imported name listed in __all__.
    return inspect.isclass(value) or inspect.isroutine(value) or inspect.ismodule(value)


def _attr_doc(module: ModuleType, name: str) -> list[str]:
    """The doc comment or docstring of ``name`` where the package assigns it."""
    candidates = [module.__name__]
    if hasattr(module, "__path__"):
        candidates += [
            f"{module.__name__}.{info.name}" for info in pkgutil.iter_modules(module.__path__)
        ]
    for modname in candidates:
        sub = importlib.import_module(modname)
        if getattr(sub, name, object()) is not getattr(module, name):
            continue
        try:
            docs = ModuleAnalyzer.for_module(modname).find_attr_docs()
        except Exception:  # no source (a compiled module): no doc comment to find
            continue
        if ("", name) in docs:
            return [line for line in docs[("", name)] if line is not None]
    return []


def _value(value: Any) -> str:
    text = repr(value) if not isinstance(value, type) else value.__qualname__
    return text if len(text) <= 200 else text[:197] + "..."


class AutoAll(SphinxDirective):
    """``.. triosrv-autoall:: MODULE``: the module, and every name in its ``__all__``."""

    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        modname = self.arguments[0]
        module = importlib.import_module(modname)
        lines = [f".. automodule:: {modname}", ""]
        for name in module.__all__:
            value = getattr(module, name)
            if _is_autodoc_member(value):
                continue
            lines += [f".. py:data:: {name}", f"   :module: {modname}"]
            lines += [f"   :value: {_value(value)}", ""]
            lines += [f"   {line}" for line in _attr_doc(module, name)] + [""]
        node = nodes.section()
        node.document = self.state.document
        self.state.nested_parse(StringList(lines, source=f"<autoall {modname}>"), 0, node)
        return node.children


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("triosrv-autoall", AutoAll)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
