"""The programs in ``examples/`` run, and do what the docs say they do.

``examples/haproxy.cfg`` and the systemd units are run by ``tests/test_haproxy.py``
and ``tests/test_systemd.py``, other programs by the tests of their feature; this file
covers ``line_upper.py`` and checks that every example is named by some test.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from triosrv._config import BACKENDS

from .helpers import listen_process

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(EXAMPLES))
from line_upper import MAX_LINE, LineUpper  # noqa: E402


def test_every_example_is_run_by_some_test() -> None:
    # A new file in examples/ needs a test that names it: line_upper.py is run here,
    # the others by the tests of their own feature (tests/*.py, helpers included). A
    # Python module counts when a test, or an example already counted, imports it.
    others = [p for p in Path(__file__).parent.glob("*.py") if p.name != "test_examples.py"]
    named = "".join(p.read_text() for p in others) + "line_upper.py"
    files = [p for p in EXAMPLES.iterdir() if p.is_file()]

    def key(p: Path) -> str:
        return p.stem if p.suffix == ".py" else p.name

    covered: set[Path] = set()
    while True:
        more = {p for p in files if p not in covered and key(p) in named}
        if not more:
            break
        covered |= more
        named += "".join(p.read_text() for p in more if p.suffix == ".py")
    unnamed = sorted(p.name for p in files if p not in covered)
    assert not unnamed, f"examples without a test: {unnamed}"


def test_line_upper_program_runs() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "line_upper.py")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "HELLO\nWORLD\nbye\n"


async def _exchange(port: int, data: bytes) -> bytes:
    reply = b""
    async with await trio.open_tcp_stream("127.0.0.1", port) as client:
        await client.send_all(data)
        with trio.fail_after(10):
            while chunk := await client.receive_some():
                reply += chunk
    return reply


@pytest.mark.parametrize("backend", BACKENDS)
async def test_line_upper_served_from_the_command_line(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What docs/howto/protocols.md tells the reader to run, on every backend.
    monkeypatch.setenv("PYTHONPATH", str(EXAMPLES))
    args = ("--handler", "line_upper:LineUpper", "--backend", backend)
    async with listen_process(*args) as server:
        assert await _exchange(server.port, b"one\r\ntwo\nquit\nignored\n") == b"ONE\nTWO\nbye\n"
        too_long = b"x" * (MAX_LINE + 1)
        assert await _exchange(server.port, too_long) == b"error: line too long\n"
        server.process.send_signal(signal.SIGTERM)
        assert await server.wait_exit(timeout=20) == 0


def _expected(data: bytes) -> tuple[bytes, bool]:
    """What LineUpper must answer to ``data`` (then EOF): a reference model."""
    out = b""
    rest = data
    while b"\n" in rest:
        line, rest = rest.split(b"\n", 1)
        line = line.rstrip(b"\r")
        if line == b"quit":
            return out + b"bye\n", True
        out += line.upper() + b"\n"
    return out, False


@settings(max_examples=200, deadline=None)
@given(
    # b"" is EOF, sent at the end; at most 30 x 100 bytes: below MAX_LINE, whose close
    # the command-line test checks.
    st.lists(
        st.binary(min_size=1, max_size=100) | st.sampled_from([b"quit\n", b"\n", b"\r\n"]),
        max_size=30,
    ),
    st.integers(min_value=1, max_value=64),
)
def test_line_upper_answers_any_chunking_like_the_reference(
    chunks: list[bytes], max_bytes: int
) -> None:
    protocol = LineUpper()
    out = b""
    for chunk in chunks:
        if protocol.close_after_flush:
            break
        protocol.receive_data(chunk)
        while piece := protocol.data_to_send(max_bytes):
            assert len(piece) <= max_bytes
            out += piece
    expected, closed = _expected(b"".join(chunks))
    assert out == expected  # nothing after the first quit counts
    assert protocol.close_after_flush == closed
    if not closed:
        protocol.receive_data(b"")
        assert protocol.close_after_flush
        assert protocol.data_to_send(max_bytes) == b""
