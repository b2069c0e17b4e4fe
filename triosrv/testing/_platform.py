"""Run triosrv as if on a platform without Linux's extras, on Linux: :func:`platform_env`.

triosrv must start wherever trio runs (macOS and the BSDs: kqueue, no epoll, no eventfd,
no CPU affinity calls, no SO_PASSCRED, no /proc). Those platforms are not on the test
machine, so the suite removes the Linux-only pieces from Python processes it starts:

- :func:`platform_env` writes a ``sitecustomize.py`` into a directory and returns an
  environment with that directory first on ``PYTHONPATH``. Every Python process started
  with it imports trio first -- so trio keeps its own epoll I/O manager, as it keeps
  kqueue on macOS -- and then replaces ``select`` and ``socket`` in ``sys.modules`` by
  copies without ``epoll``/``EPOLL*``/``POLLRDHUP``, ``SO_PASSCRED``/``SCM_CREDENTIALS`` and
  ``SOCK_CLOEXEC``/``SOCK_NONBLOCK``, and deletes ``os.eventfd*``/``EFD_*`` and
  ``os.sched_{get,set}affinity``. Everything imported afterwards, triosrv included,
  sees a ``select``, ``socket`` and ``os`` shaped like macOS's.
- :func:`without_proc` wraps a command so that it runs in a private mount namespace
  whose ``/proc`` is an empty tmpfs (``unshare(1)``, needs root), which is what a
  process on macOS finds there. It returns None where that cannot be done.

Nothing in triosrv looks for the simulation: the code paths it exercises are the real
fallbacks, chosen by feature detection (``hasattr(select, "epoll")``, a missing file).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["HIDDEN", "platform_env", "without_proc"]

#: What :func:`platform_env` hides, by module: the names, and the prefixes of names.
HIDDEN: Mapping[str, tuple[str, ...]] = {
    "select": ("epoll", "EPOLL", "POLLRDHUP", "POLLMSG"),
    "socket": ("SO_PASSCRED", "SCM_CREDENTIALS", "SOCK_CLOEXEC", "SOCK_NONBLOCK"),
    "os": ("eventfd", "EFD_", "sched_getaffinity", "sched_setaffinity"),
}

_SITECUSTOMIZE = '''\
"""Written by triosrv.testing.platform_env: hide Linux-only features (see its docs)."""
import os
import sys
import types

import trio  # first: trio keeps the I/O manager it chose, as it keeps kqueue on macOS

HIDDEN = {hidden!r}


def _hidden(module, name):
    return name.startswith(HIDDEN[module])


def _copy_without(name):
    # A copy, not an edit: trio (imported above) keeps using the real module.
    real = sys.modules.get(name) or __import__(name)
    copy = types.ModuleType(name, real.__doc__)
    for key, value in vars(real).items():
        if not _hidden(name, key):
            setattr(copy, key, value)
    sys.modules[name] = copy


_copy_without("select")
_copy_without("socket")
for _name in [n for n in vars(os) if _hidden("os", n)]:
    delattr(os, _name)  # trio uses none of these; os is shared with the interpreter
'''

_HIDE_PROC = 'mount -t tmpfs -o size=4k,mode=0555 triosrv-no-proc /proc && exec "$@"'


def platform_env(
    directory: str | os.PathLike[str],
    base: Mapping[str, str] | None = None,
    *,
    hide: Mapping[str, Sequence[str]] = HIDDEN,
) -> dict[str, str]:
    """Write the simulation's ``sitecustomize.py`` into ``directory``; return the
    environment (``base``, default ``os.environ``, plus ``PYTHONPATH``) that loads it.

    ``hide`` maps ``select``, ``socket`` and ``os`` to the names (and name prefixes)
    removed from them; the default is what macOS lacks of Linux's (see the module docs).
    The directory must hold no other ``sitecustomize.py`` of value: it is overwritten.
    Pass the environment to ``subprocess`` for the processes that should run simulated;
    the calling process is not changed.
    """
    unknown = set(hide) - {"select", "socket", "os"}
    if unknown:
        raise ValueError(f"hide: only select, socket and os, not {sorted(unknown)}")
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    hidden = {name: tuple(hide.get(name, ())) for name in ("select", "socket", "os")}
    source = _SITECUSTOMIZE.format(hidden=hidden)
    (path / "sitecustomize.py").write_text(source, encoding="utf-8")
    env = dict(os.environ if base is None else base)
    rest = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(path) if not rest else f"{path}{os.pathsep}{rest}"
    return env


def without_proc(cmd: Sequence[str]) -> list[str] | None:
    """``cmd`` wrapped to run with an empty ``/proc`` (its own mount namespace), or None
    where this machine cannot do that (no ``unshare(1)``, not root, not Linux).

    The namespace ends with the process; the host's ``/proc`` is never touched.
    """
    if not _can_hide_proc():
        return None
    return [*_proc_prefix(), *cmd]


def _proc_prefix() -> list[str]:
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", _HIDE_PROC, "sh"]


@functools.cache
def _can_hide_proc() -> bool:
    # Try it once: creating a mount namespace needs CAP_SYS_ADMIN.
    if shutil.which("unshare") is None or not os.path.isdir("/proc/self"):
        return False
    try:
        done = subprocess.run(
            [*_proc_prefix(), "sh", "-c", "test ! -e /proc/self"],
            capture_output=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0
