"""A worker process of the master: ``python -m triosrv._worker`` (see ``_workers.py``).

It reads its options from :data:`~triosrv._workers.WORKER_OPTIONS_ENV` (JSON), imports
the handler from source, and serves the sockets it inherited until SIGTERM, exactly
as ``triosrv listen`` serves. A start that fails (a bad option, a handler that does
not import) is one log line, a ``STATUS=`` notification that the master shows, and
exit status 2.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import json
import logging
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

from ._errors import BindError, ConfigError
from ._options import load_listen
from ._runner import configure_logging, run_main, serve_until_signalled
from ._systemd import notify
from ._workers import WORKER_OPTIONS_ENV

logger = logging.getLogger("triosrv")


class _FromSource(importlib.machinery.SourceFileLoader):
    """Compile from the source file, never from ``__pycache__``.

    The cache is checked by the source's mtime in whole seconds and its size: a
    handler edited within the second of its last compile, to the same length, would
    load the old code. Whoever reloads has just changed the code; compiling their
    few modules costs milliseconds.
    """

    def path_stats(self, path: str) -> dict[str, float]:
        raise OSError("no bytecode cache: compile from source")  # get_code then compiles


class _UserCodeFinder(importlib.abc.MetaPathFinder):
    """Finds modules outside the Python installation (the operator's handler code)
    and loads them with :class:`_FromSource`; leaves everything else to the others."""

    def __init__(self) -> None:
        self._installed = tuple(
            {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
        )

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        origin = spec.origin if spec is not None else None
        if spec is None or origin is None or type(spec.loader) is not _SOURCE_LOADER:
            return None
        if os.path.realpath(origin).startswith(self._installed):
            return None
        spec.loader = _FromSource(fullname, origin)
        return spec


_SOURCE_LOADER = importlib.machinery.SourceFileLoader


def main() -> None:
    """Serve as one worker; exit 0 after a drain, 2 if it cannot start, 1 on a bind error."""
    try:
        options = json.loads(os.environ.pop(WORKER_OPTIONS_ENV))
    except (KeyError, ValueError):
        sys.exit(f"error: {WORKER_OPTIONS_ENV} is missing or not JSON: run by the master only")
    configure_logging(str(options.get("log-level", "info")), str(options.get("log-format", "text")))
    sys.meta_path.insert(0, _UserCodeFinder())
    try:
        config, handler = load_listen(options)
    except ConfigError as exc:
        _cannot_start(str(exc), 2)
    try:
        run_main(
            functools.partial(serve_until_signalled, control=options["control"], announce=False),
            handler,
            config,
        )
    except (BindError, ConfigError) as exc:
        _cannot_start(str(exc), 1)


def _cannot_start(reason: str, code: int) -> NoReturn:
    logger.error("worker (pid %d) cannot start: %s", os.getpid(), reason)
    notify(f"STATUS={reason}")
    sys.exit(code)


if __name__ == "__main__":
    main()
