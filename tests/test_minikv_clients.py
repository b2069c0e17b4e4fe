"""minikv under clients nobody here wrote: redis-py, redis-cli, redis-benchmark, and
``triosrv chaos``; plus the slow subscriber cut while 64 MiB are published.

Each test runs ``python examples/minikv.py --port 0`` as a process. redis-py comes with
the ``test`` extra; redis-cli and redis-benchmark with Debian's ``redis-tools`` (the tests
skip, naming the package, where it is missing).
"""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from .minikv_support import encode, exchange, minikv_process, need

redis = pytest.importorskip("redis", reason="redis-py is in the test extra: pip install redis")

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def port() -> Iterator[int]:
    with minikv_process() as (port, _):
        yield port


@pytest.fixture
def client(port: int) -> Iterator[redis.Redis]:
    with redis.Redis(port=port, protocol=2, socket_timeout=10) as client:
        yield client


def test_redis_py_every_command(client: redis.Redis) -> None:
    assert client.ping() is True
    assert client.echo("hi") == b"hi"
    assert client.set("k", "v") is True
    assert client.get("k") == b"v"
    assert client.get("missing") is None
    assert client.set("k", "w", nx=True) is None
    assert client.set("k", "w", xx=True) is True
    assert client.set("new", "v", xx=True) is None
    assert client.set("k", "v", ex=100) is True
    assert client.ttl("k") == 100
    assert client.set("k", "v", px=50_000) is True
    assert 49 <= client.ttl("k") <= 50
    assert client.set("k", "x", get=True) == b"v"
    assert client.exists("k", "missing", "k") == 2
    assert client.mset({"a": "1", "b": "2"}) is True
    assert client.mget("a", "b", "missing") == [b"1", b"2", None]
    assert client.incr("a") == 2
    assert client.incrby("a", 10) == 12
    assert client.decr("a") == 11
    assert client.decrby("a", 20) == -9
    assert client.expire("a", 100) is True
    assert client.expire("missing", 100) is False
    assert client.ttl("a") == 100
    assert client.ttl("b") == -1
    assert client.ttl("missing") == -2
    assert client.delete("a", "missing") == 1
    assert client.dbsize() == 2  # k and b
    assert client.publish("nobody", "m") == 0
    assert client.client_setname("me") is True
    assert client.client_getname() == "me"
    assert client.config_get("save") == {"save": ""}
    assert client.lpush("list", "a", "b") == 2
    assert client.rpush("list", "c") == 3
    assert client.lrange("list", 0, -1) == [b"b", b"a", b"c"]
    assert client.llen("list") == 3
    assert client.lpop("list") == b"b"
    assert client.rpop("list", 2) == [b"c", b"a"]
    assert client.exists("list") == 0
    client.rpush("list", "x")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE Operation against a key"):
        client.get("list")
    assert client.flushall() is True
    assert client.dbsize() == 0
    with pytest.raises(redis.ResponseError, match="value is not an integer or out of range"):
        client.incrby("k", "x")
    with pytest.raises(redis.ResponseError, match="unknown command 'NOSUCH'"):
        client.execute_command("NOSUCH", "a")
    with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'get'"):
        client.execute_command("GET")
    with pytest.raises(redis.ResponseError, match="syntax error"):
        client.execute_command("SET", "k", "v", "BOGUS")
    with pytest.raises(redis.ResponseError, match="invalid expire time in 'set' command"):
        client.set("k", "v", ex=-1)


def test_redis_py_default_client_falls_back_to_resp2(port: int) -> None:
    # redis-py 8 asks for RESP3 with HELLO 3 unless told otherwise; minikv's answer
    # (Redis's for an unknown version) makes it carry on in RESP2.
    with redis.Redis(port=port, socket_timeout=10) as client:
        assert client.set("k", "v") is True
        assert client.get("k") == b"v"


def test_redis_py_pipelines_of_1000(client: redis.Redis) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(1000):
        pipe.set(f"key:{i}", i)
    assert pipe.execute() == [True] * 1000
    pipe = client.pipeline(transaction=False)
    for i in range(1000):
        pipe.incrby(f"key:{i}", i)
    assert pipe.execute() == [2 * i for i in range(1000)]
    pipe = client.pipeline(transaction=False)
    for i in range(1000):
        pipe.get(f"key:{i}")
    assert pipe.execute() == [b"%d" % (2 * i) for i in range(1000)]
    assert client.dbsize() == 1000


def _collect(pubsub: redis.client.PubSub, count: int, timeout: float = 30) -> list[bytes]:
    received: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(received) < count and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=1)
        if message is not None and message["type"] == "message":
            received.append(message["data"])
    return received


def test_redis_py_pubsub_several_subscribers_in_order(port: int, client: redis.Redis) -> None:
    subscribers = [redis.Redis(port=port, protocol=2, socket_timeout=10) for _ in range(4)]
    pubsubs = [s.pubsub() for s in subscribers]
    try:
        for pubsub in pubsubs:
            pubsub.subscribe("news", "other")
            assert pubsub.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
            assert pubsub.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
        messages = [b"%d:" % i + b"x" * (i % 300) for i in range(500)]
        for message in messages:
            assert client.publish("news", message) == 4
        for pubsub in pubsubs:
            assert _collect(pubsub, 500) == messages
        pubsubs[0].unsubscribe("news")
        assert pubsubs[0].get_message(timeout=5)["type"] == "unsubscribe"  # type: ignore[index]
        assert client.publish("news", "late") == 3
    finally:
        for pubsub in pubsubs:
            pubsub.close()
        for subscriber in subscribers:
            subscriber.close()


def _peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/PID/status")


def test_minikv_slow_subscriber_cut_while_64_mib_are_published() -> None:
    """A subscriber that never reads is cut; a fast one gets every message in order;
    the server's memory stays bounded (a 4 MiB output limit, not 64 MiB of backlog)."""
    with minikv_process("--pubsub-limit", "4mb", "0", "0") as (port, server):
        with (
            socket.create_connection(("127.0.0.1", port), timeout=30) as slow,
            redis.Redis(port=port, protocol=2, socket_timeout=30) as fast_client,
            redis.Redis(port=port, protocol=2, socket_timeout=30) as publisher,
        ):
            slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            slow.sendall(encode("SUBSCRIBE", "firehose"))
            fast = fast_client.pubsub()
            fast.subscribe("firehose")
            assert fast.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
            assert slow.recv(100).startswith(b"*3\r\n$9\r\nsubscribe")
            baseline = _peak_rss_kib(server.process.pid)
            received: list[bytes] = []
            receivers = []
            for batch in range(64):  # 64 MiB in 64 KiB messages, 1 MiB at a time
                for i in range(batch * 16, batch * 16 + 16):
                    receivers.append(publisher.publish("firehose", b"%06d" % i + b"m" * 65530))
                # The fast subscriber keeps up (this test reads it between batches).
                received += (m[:6] for m in _collect(fast, 16))
            fast.close()
            assert received == [b"%06d" % i for i in range(1024)]
            assert receivers[0] == 2 and receivers[-1] == 1  # the slow one was cut
            slow.settimeout(10)
            drained = 0
            while chunk := slow.recv(1 << 20):  # what was queued before the cut, then EOF
                drained += len(chunk)
            assert drained < 32 * 1024 * 1024
            growth_mib = (_peak_rss_kib(server.process.pid) - baseline) / 1024
            assert growth_mib < 48, f"peak RSS grew by {growth_mib:.0f} MiB"
        server.stop(signal.SIGTERM)
        assert b"1 subscriber(s) cut" in server.read_log()


def test_redis_cli_runs_every_command(port: int) -> None:
    cli = need("redis-cli", "redis-tools")

    def run(*args: str) -> str:
        done = subprocess.run(
            [cli, "-p", str(port), *args], capture_output=True, timeout=30, check=True
        )
        return done.stdout.decode()

    assert run("PING") == "PONG\n"
    assert run("SET", "k", "v") == "OK\n"
    assert run("GET", "k") == "v\n"
    assert run("INCR", "n") == "1\n"
    assert run("MGET", "k", "n", "x") == "v\n1\n\n"
    assert run("NOSUCH").startswith("ERR unknown command 'NOSUCH'")
    # Commands on stdin, as a script would pipe them (redis-cli sends them as RESP).
    piped = subprocess.run(
        [cli, "-p", str(port)],
        input=b"SET a 1\nINCRBY a 41\nGET a\nDBSIZE\n",
        capture_output=True,
        timeout=30,
        check=True,
    )
    assert piped.stdout == b"OK\n42\n42\n3\n"


class _Terminal:
    # A program on a pseudo-terminal; answers the cursor-position queries (ESC [6n)
    # that redis-cli's line editor sends, as a terminal would.
    def __init__(self, argv: list[str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: exec at once
            os.execv(argv[0], argv)
        self.output = bytearray()

    def read_until(self, marker: bytes, timeout: float = 20) -> bool:
        deadline = time.monotonic() + timeout
        while marker not in self.output and time.monotonic() < deadline:
            if select.select([self.fd], [], [], 0.1)[0]:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:  # the program exited
                    return marker in self.output
                self.output += chunk
                if b"\x1b[6n" in chunk:
                    os.write(self.fd, b"\x1b[1;1R")
        return marker in self.output

    def close(self) -> None:
        os.close(self.fd)
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(self.pid, 0)


def test_redis_cli_interactive_session(port: int) -> None:
    # On a terminal, redis-cli first asks for COMMAND DOCS, then runs what is typed.
    cli = need("redis-cli", "redis-tools")
    terminal = _Terminal([cli, "-p", str(port)])
    try:
        prompt = f"127.0.0.1:{port}> ".encode()
        assert terminal.read_until(prompt)
        for line, reply in [(b"SET greeting hello", b"\r\nOK\r\n"), (b"GET greeting", b'"hello"')]:
            terminal.output.clear()
            os.write(terminal.fd, line + b"\r")
            assert terminal.read_until(reply), bytes(terminal.output[-300:])
            # Type the next line only at the prompt: the line editor drops typed-ahead input.
            terminal.output = terminal.output.split(reply, 1)[1]
            assert terminal.read_until(prompt)
        assert b"ERR" not in terminal.output
    finally:
        terminal.close()


def test_redis_benchmark_runs_without_errors(port: int) -> None:
    bench = need("redis-benchmark", "redis-tools")
    done = subprocess.run(
        [bench, "-p", str(port), "-t", "ping,set,get,incr,mset", "-n", "2000", "-c", "10", "-q"],
        capture_output=True,
        timeout=120,
    )
    out = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 0, out
    assert "ERROR" not in out and "WARNING" not in out, out
    for test in ("PING_INLINE: ", "PING_MBULK: ", "SET: ", "GET: ", "INCR: ", "MSET (10 keys): "):
        assert re.search(re.escape(test) + r"[0-9.]+ requests per second", out), out
    pipelined = subprocess.run(
        [bench, "-p", str(port), "-t", "set,get", "-n", "5000", "-P", "16", "-q"],
        capture_output=True,
        timeout=120,
    )
    assert pipelined.returncode == 0 and b"ERROR" not in pipelined.stdout + pipelined.stderr


def test_triosrv_chaos_expect_any_passes_against_minikv(port: int) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "triosrv",
            "chaos",
            "--target",
            f"127.0.0.1:{port}",
            "--expect",
            "any",
            "--duration",
            "1",
            "--flood",
            "300",
            "--churn",
            "300",
        ],
        capture_output=True,
        timeout=240,
    )
    out = done.stdout.decode()
    assert done.returncode == 0, out + done.stderr.decode()
    # minikv still answers after the attacks.
    assert exchange(port, encode("PING"), until=b"+PONG\r\n") == b"+PONG\r\n"
