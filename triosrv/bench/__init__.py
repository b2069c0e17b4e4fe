"""Tools that measure servers: an echo load generator with its own event loop."""

from __future__ import annotations

from ._load import LoadResult, run_load

__all__ = ["LoadResult", "run_load"]
