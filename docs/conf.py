"""Sphinx configuration of the triosrv documentation (MyST Markdown, furo).

Builds with no network: no intersphinx, no remote images. Build it with
``sphinx-build -W --keep-going -b html docs docs/_build/html`` (what CI runs).
"""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

project = "triosrv"
author = "the triosrv developers"
copyright = "2026, the triosrv developers"
release = importlib.metadata.version("triosrv")
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx_click",
    "triosrv_autoall",
    "triosrv_tables",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# MyST: `{directive}` fences, ::: fences, heading anchors for [text](page.md#anchor) links.
myst_enable_extensions = ["colon_fence", "deflist", "fieldlist"]
myst_heading_anchors = 3

# Pages other engineers drop into a section (howto/*.md and the like) appear through the
# sections' glob toctrees; a page deliberately left out of every toctree must not fail -W.
suppress_warnings = ["toc.not_included"]

# autodoc: what `__all__` lists, in source order, with signatures as written.
autodoc_default_options = {
    "members": True,
    "undoc-members": True,
    "show-inheritance": True,
    "member-order": "bysource",
}
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autoclass_content = "both"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True

html_theme = "furo"
html_title = f"triosrv {release}"
html_static_path = ["_static"]
html_show_sourcelink = True
