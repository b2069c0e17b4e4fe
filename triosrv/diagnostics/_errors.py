"""The one exception the diagnostics tools raise."""

from __future__ import annotations


class DiagnosticsError(Exception):
    """A diagnostics request that cannot be answered: a pid that does not exist, a
    control socket nobody listens on, a missing optional extra.

    The message is one line that says what to do; the CLI prints it and exits 1.
    """


def require_extra(extra: str, *modules: str) -> None:
    """Raise :class:`DiagnosticsError` naming the pip command if a module of an
    optional extra is not installed."""
    import importlib.util

    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise DiagnosticsError(
            f"{', '.join(missing)} not installed: pip install 'triosrv[{extra}]'"
        )
