"""Test support for examples/minikv.py: the real redis-server next to it, raw RESP
exchanges, and skips that name the Debian package a missing tool comes from."""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MINIKV = EXAMPLES / "minikv.py"
if str(EXAMPLES) not in sys.path:  # minikv's modules import each other by name
    sys.path.insert(0, str(EXAMPLES))
minikv = importlib.import_module("minikv")
minikv_state = importlib.import_module("minikv_state")

# The same limits on both servers, so that the "too big" errors can be compared
# without sending hundreds of megabytes (1mb is the least Redis accepts).
LIMITS = ("--proto-max-bulk-len", "1mb", "--client-query-buffer-limit", "2mb")


def need(tool: str, package: str) -> str:
    """The path of ``tool``, or skip the test naming the Debian package to install."""
    path = shutil.which(tool)
    if path is None:
        pytest.skip(
            f"{tool} is not installed (Debian package {package}: apt-get install {package})"
        )
    return path


def encode(*args: bytes | str | int) -> bytes:
    """One command as a client library sends it (multibulk)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(parts)


def free_port() -> int:
    """A TCP port free on loopback now (redis-server cannot bind port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Process:
    # A server subprocess whose stderr goes to a file (never a pipe that could fill).
    def __init__(self, argv: list[str], ready: re.Pattern[bytes], timeout: float) -> None:
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.final_log = b""
        self.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log
        )
        deadline = time.monotonic() + timeout
        while True:
            match = ready.search(self.read_log())
            if match:
                self.match = match
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = self.read_log().decode(errors="replace")
                self.stop()
                raise AssertionError(f"{argv[0]} did not start; log:\n{log}")
            time.sleep(0.02)  # real sleep: polling a subprocess's log file until it is ready

    def read_log(self) -> bytes:
        if self.log.closed:
            return self.final_log
        self.log.seek(0)
        return self.log.read()

    def stop(self, sig: int = signal.SIGKILL, timeout: float = 10) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            if not self.log.closed:
                self.final_log = self.read_log()
                self.log.close()


@contextlib.contextmanager
def redis_server(*extra: str) -> Iterator[int]:
    """A fresh ``redis-server`` on a free loopback port, no persistence; killed by PID."""
    binary = need("redis-server", "redis-server")
    for _attempt in range(5):
        port = free_port()
        argv = [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        try:
            server = _Process([*argv, *extra], re.compile(rb"Ready to accept connections"), 10)
        except AssertionError:  # the port was taken meanwhile: try another
            continue
        try:
            yield port
        finally:
            server.stop()
        return
    raise AssertionError("redis-server did not start on any of 5 free ports")


@contextlib.contextmanager
def minikv_process(*extra: str) -> Iterator[tuple[int, _Process]]:
    """``python examples/minikv.py --port 0 EXTRA``; yields (port, process)."""
    server = _Process(
        [sys.executable, str(MINIKV), "--port", "0", *extra],
        re.compile(rb"listening on tcp://127\.0\.0\.1:(\d+)"),
        20,
    )
    try:
        yield int(server.match[1]), server
    finally:
        server.stop()


def exchange(port: int, data: bytes, *, until: bytes | None = None, timeout: float = 10) -> bytes:
    """Send ``data`` and return what comes back: up to and including ``until`` when
    given (the reply to a last sentinel command), else everything until the server
    closes the connection."""
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        deadline = time.monotonic() + timeout
        while until is None or not received.endswith(until):
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            except TimeoutError:
                raise AssertionError(
                    f"no complete reply after {timeout} s: {bytes(received[-200:])!r}"
                ) from None
            if not chunk:
                break
            received += chunk
    return bytes(received)


def sentinel(tag: str) -> tuple[bytes, bytes]:
    """A last command for a script, and the reply that marks the end of its replies."""
    word = f"sentinel-{tag}-{os.getpid()}".encode()
    return encode("ECHO", word), b"$%d\r\n%s\r\n" % (len(word), word)
