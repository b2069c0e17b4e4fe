"""docs/howto/framing.md and examples/lineproto.py run as written."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import trio
import trio.testing

import triosrv
from triosrv.testing import open_test_server

from .helpers import ListenProcess

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "howto" / "framing.md"
EXAMPLES = ROOT / "examples"


def doc_namespace() -> dict[str, Any]:
    """Run every ```python block of the how-to, in order, in one namespace."""
    blocks = re.findall(r"^```python\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)
    assert len(blocks) >= 4
    namespace: dict[str, Any] = {"__name__": "framing_doc"}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)  # the client block runs a server
    return namespace


def test_framing_doc_examples_run() -> None:
    namespace = doc_namespace()

    async def exchange(handler: Any, data: bytes) -> bytes:
        async with open_test_server(handler) as running, await running.connect() as stream:
            await stream.send_all(data)
            await stream.send_eof()
            received = b""
            while chunk := await stream.receive_some():
                received += chunk
            return received

    upload = namespace["upload"]
    assert trio.run(exchange, upload, b"PUT 11\r\nhello worldab\r\ncd\r\n") == (
        b"+11 bytes\r\nba\r\ndc\r\n"
    )
    assert trio.run(exchange, upload, b"PUT -1\r\n") == (
        b"-ERR expected PUT <size up to 1 MiB>\r\n"
    )
    assert trio.run(exchange, namespace["handler"], b"a\n" + b"b" * 2000) == (
        b"+A\r\n-ERR line too long\r\n"
    )


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lineproto", EXAMPLES / "lineproto.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_lineproto_example_answers_a_pipelined_client() -> None:
    lineproto = load_example()
    async with open_test_server(lineproto.handler) as running:
        host, port = running.address.removeprefix("tcp://").rsplit(":", 1)
        commands = [b"PING", b"echo hi there", b"SUM 1 2 39", b"SUM x", b"NOPE", b"QUIT"]
        replies = await lineproto.client((host, int(port)), commands)
    assert replies == [
        b"+PONG",
        b"+hi there",
        b"+42",
        b"-ERR SUM takes integers",
        b"-ERR unknown command",
        b"+BYE",
    ]


async def test_lineproto_example_under_triosrv_listen() -> None:
    # As the docs say to run it: PYTHONPATH=examples triosrv listen --handler lineproto:handler
    env = {**os.environ, "PYTHONPATH": str(EXAMPLES)}
    process = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "triosrv",
            "listen",
            "--port",
            "0",
            "--handler",
            "lineproto:handler",
        ],
        stderr=subprocess.PIPE,
        env=env,
    )
    server = ListenProcess(process)
    try:
        await server.read_log_until(b"listening on tcp://")
        with trio.fail_after(10):
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            async with stream:
                await stream.send_all(b"ping\r\n" + b"x" * 1100)
                received = b""
                while chunk := await stream.receive_some():
                    received += chunk
        assert received == b"+PONG\r\n-ERR line too long\r\n"
        process.send_signal(15)
        assert await server.wait_exit(timeout=10) == 0
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
        assert process.stderr is not None
        await process.stderr.aclose()
    assert triosrv.FrameChannel.__doc__
