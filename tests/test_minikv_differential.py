"""minikv against a real redis-server: the same bytes in, the same bytes out.

Each script runs on a fresh redis-server and a fresh ``python examples/minikv.py``, both
with the same limits; the replies are compared byte for byte. Skipped (naming the
Debian package) where redis-server is not installed; CI installs it.
"""

from __future__ import annotations

import random
import re
import socket
import time
from collections.abc import Iterator

import pytest

from .minikv_support import LIMITS, encode, exchange, minikv_process, redis_server, sentinel

pytestmark = pytest.mark.timeout(300)

LONG_ARG = "x" * 300
# Every command minikv implements, with the arguments and errors Redis users meet.
SCRIPT: list[tuple[str | bytes | int, ...]] = [
    ("PING",),
    ("ping", "hello"),
    ("PING", "a", "b"),
    ("ECHO", "hi"),
    ("ECHO",),
    ("ECHO", "a", "b"),
    ("ECHO", b"bin\x00\xff\r\nary"),
    ("SET", "k", "v"),
    ("GET", "k"),
    ("GET", "missing"),
    ("GET",),
    ("GET", "a", "b"),
    ("SET", "k"),
    ("SET", "k", "v2", "NX"),
    ("SET", "k", "v3", "XX"),
    ("GET", "k"),
    ("SET", "new", "v", "XX"),
    ("SET", "new", "v", "NX"),
    ("SET", "k", "v", "NX", "XX"),
    ("SET", "k", "v", "XX", "NX"),
    ("SET", "k", "v", "EX", "100"),
    ("TTL", "k"),
    ("SET", "k", "v", "PX", "100000"),
    ("TTL", "k"),
    ("SET", "k", "v", "EX", "0"),
    ("SET", "k", "v", "EX", "-5"),
    ("SET", "k", "v", "PX", "0"),
    ("SET", "k", "v", "EX", "abc"),
    ("SET", "k", "v", "EX", "1.5"),
    ("SET", "k", "v", "EX"),
    ("SET", "k", "v", "EX", "10", "PX", "100"),
    ("SET", "k", "v", "EX", "9223372036854775807"),
    ("SET", "k", "v", "PX", "9223372036854775807"),
    ("SET", "k", "v", "EX", "9223372036854775808"),
    ("SET", "k", "v", "BOGUS"),
    ("SET", "k", "v", "nx"),
    ("SET", "k", "v", "KEEPTTL"),
    ("SET", "k", "v", "GET"),
    ("SET", "k", "v2", "GET", "EX", "50"),
    ("TTL", "k"),
    ("SET", "k", "v3", "KEEPTTL"),
    ("TTL", "k"),
    ("SET", "k", "v4"),
    ("TTL", "k"),
    ("SET", "k", "v", "KEEPTTL", "EX", "5"),
    ("SET", "k", "v", "NX", "GET"),
    ("SET", "absent", "v", "XX", "GET"),
    ("SET", "k", "v", "EXAT", "99999999999"),
    ("SET", "k", "v", "PXAT", "1"),
    ("GET", "k"),
    ("DEL", "k", "missing", "k"),
    ("DEL",),
    ("MSET", "a", "1", "b", "2", "c", "3"),
    ("MSET", "a", "1", "b"),
    ("MSET", "a"),
    ("MGET", "a", "b", "missing", "c"),
    ("MGET",),
    ("EXISTS", "a", "b", "missing", "a"),
    ("EXISTS",),
    ("DBSIZE",),
    ("DBSIZE", "x"),
    ("INCR", "counter"),
    ("INCR", "counter"),
    ("DECR", "counter"),
    ("DECR", "fresh"),
    ("INCRBY", "counter", "10"),
    ("INCRBY", "counter", "-100"),
    ("INCRBY", "counter", "abc"),
    ("INCRBY", "counter", "1.5"),
    ("INCRBY", "counter", " 1"),
    ("INCRBY", "counter", "+1"),
    ("INCRBY", "counter", "01"),
    ("INCRBY", "counter", "-0"),
    ("INCRBY", "counter"),
    ("SET", "s", "hello"),
    ("INCR", "s"),
    ("DECR", "s"),
    ("INCRBY", "s", "1"),
    ("SET", "big", "9223372036854775807"),
    ("INCR", "big"),
    ("INCRBY", "big", "0"),
    ("SET", "small", "-9223372036854775808"),
    ("DECR", "small"),
    ("INCRBY", "small", "-1"),
    ("INCRBY", "x", "9223372036854775808"),
    ("SET", "n", "999999999999999999"),
    ("INCRBY", "n", "9223372036854775000"),
    ("INCRBY", "n", "-9223372036854775808"),
    ("DECRBY", "n", "-9223372036854775808"),
    ("DECRBY", "n", "5"),
    ("DECRBY", "n"),
    ("DECRBY", "n", "x"),
    ("SET", "n", "00"),
    ("INCR", "n"),
    ("SET", "n", "0"),
    ("INCR", "n"),
    ("SET", "n", "-5"),
    ("INCR", "n"),
    ("SET", "spaces", " 12"),
    ("INCR", "spaces"),
    ("INCR",),
    ("INCR", "a", "b"),
    ("DECR",),
    ("SET", "e", "v"),
    ("EXPIRE", "e", "100"),
    ("TTL", "e"),
    ("EXPIRE", "e", "200", "NX"),
    ("EXPIRE", "e", "200", "XX"),
    ("EXPIRE", "e", "100", "GT"),
    ("EXPIRE", "e", "300", "GT"),
    ("EXPIRE", "e", "400", "LT"),
    ("EXPIRE", "e", "100", "LT"),
    ("TTL", "e"),
    ("EXPIRE", "e", "100", "NX", "XX"),
    ("EXPIRE", "e", "100", "GT", "LT"),
    ("EXPIRE", "e", "100", "FOO"),
    ("EXPIRE", "e", "abc"),
    ("EXPIRE", "e"),
    ("EXPIRE", "missing", "100"),
    ("EXPIRE", "e", "9223372036854775807"),
    ("EXPIRE", "e", "-9223372036854775808"),
    ("EXPIRE", "e", "9223372036854775"),
    ("EXPIRE", "e", "-9223372036854775"),
    ("EXISTS", "e"),
    ("SET", "e", "v"),
    ("EXPIRE", "e", "-1"),
    ("EXISTS", "e"),
    ("SET", "e", "v"),
    ("EXPIRE", "e", "0"),
    ("TTL", "e"),
    ("TTL", "missing"),
    ("SET", "p", "v"),
    ("TTL", "p"),
    ("TTL",),
    ("PUBLISH", "chan", "msg"),
    ("PUBLISH", "chan"),
    ("FLUSHALL",),
    ("DBSIZE",),
    ("SET", "a", "1"),
    ("FLUSHALL", "ASYNC"),
    ("FLUSHALL", "sync"),
    ("FLUSHALL", "foo"),
    ("FLUSHALL", "async", "sync"),
    ("DBSIZE",),
    ("NOSUCHCOMMAND",),
    ("NOSUCHCOMMAND", "a", "b"),
    ("nosuch", LONG_ARG, LONG_ARG),
    ("nosuch", "a\r\nb", b"nul\x00after"),
    (b"\xffbinary", "x"),
    ("UNSUBSCRIBE",),
    ("UNSUBSCRIBE", "a", "b"),
    ("SUBSCRIBE",),
    ("CONFIG", "GET", "save"),
    ("CONFIG", "GET", "appendonly"),
    ("CONFIG", "GET", "nosuchparameter"),
    ("CONFIG", "GET"),
    ("CONFIG",),
    ("CONFIG", "NOSUCH"),
    ("CLIENT", "SETNAME", "myname"),
    ("CLIENT", "GETNAME"),
    ("CLIENT", "SETNAME", "bad name"),
    ("CLIENT", "SETNAME", ""),
    ("CLIENT", "GETNAME"),
    ("CLIENT", "SETNAME"),
    ("CLIENT", "SETINFO", "LIB-NAME", "redis-py"),
    ("CLIENT",),
    ("COMMAND", "NOSUCH"),
    ("HELLO", "1"),
    ("HELLO", "abc"),
    ("HELLO", "2", "AUTH", "bob", "pw"),
    ("HELLO", "2", "FOO"),
    ("HELLO", "2", "SETNAME", "bad name"),
    # Lists, and keys of the wrong kind.
    ("LPUSH", "l", "a", "b", "c"),
    ("RPUSH", "l", "d"),
    ("LLEN", "l"),
    ("LRANGE", "l", "0", "-1"),
    ("LRANGE", "l", "-2", "100"),
    ("LRANGE", "l", "5", "1"),
    ("LRANGE", "l", "-100", "1"),
    ("LRANGE", "l", "x", "1"),
    ("LRANGE", "missing", "0", "-1"),
    ("LRANGE", "l", "0"),
    ("GET", "l"),
    ("INCR", "l"),
    ("INCRBY", "l", "2"),
    ("SET", "l", "v", "GET"),
    ("SET", "l", "v", "NX", "GET"),
    ("MGET", "l", "missing"),
    ("EXISTS", "l"),
    ("TTL", "l"),
    ("EXPIRE", "l", "100"),
    ("TTL", "l"),
    ("DBSIZE",),
    ("SET", "str", "v"),
    ("LPUSH", "str", "x"),
    ("LLEN", "str"),
    ("LPOP", "str"),
    ("LRANGE", "str", "0", "1"),
    ("LPOP", "l"),
    ("RPOP", "l"),
    ("LPOP", "l", "0"),
    ("LPOP", "l", "-1"),
    ("LPOP", "l", "x"),
    ("LPOP", "l", "1", "2"),
    ("RPOP", "l", "5"),
    ("LPOP", "l"),
    ("EXISTS", "l"),
    ("LPOP", "l", "2"),
    ("RPOP", "l"),
    ("LLEN", "l"),
    ("LPUSH", "l"),
    ("RPUSH", "l", "x"),
    ("SET", "l", "now a string"),
    ("GET", "l"),
    ("LPUSH", "l2", "x"),
    ("DEL", "l2"),
    ("LPUSH", "l3", "x"),
    ("MSET", "l3", "s"),
    ("GET", "l3"),
    ("QUIT", "extra"),
]


def script_bytes(script: list[tuple[str | bytes | int, ...]]) -> bytes:
    return b"".join(encode(*command) for command in script)


@pytest.fixture(scope="module", params=["trio", "epoll"])
def servers(request: pytest.FixtureRequest) -> Iterator[tuple[int, int]]:
    """(redis port, minikv port); one pair per minikv backend, FLUSHALLed by each test.

    The ``epoll`` backend serves the key-value commands through the same parser and
    sessions (a sans-IO Protocol in triosrv's epoll loop), without pub/sub.
    """
    backend = ("--backend", request.param)
    with redis_server(*LIMITS) as redis_port, minikv_process(*LIMITS, *backend) as (kv_port, _):
        yield redis_port, kv_port


def both(servers: tuple[int, int], data: bytes, *, until_end: bool = True) -> tuple[bytes, bytes]:
    """Send ``data`` to both servers (after a FLUSHALL); their replies."""
    tail, marker = sentinel("diff") if until_end else (b"", None)
    replies = []
    for port in servers:
        exchange(port, encode("FLUSHALL"), until=b"+OK\r\n")
        replies.append(exchange(port, data + tail, until=marker))
    return replies[0], replies[1]


def test_minikv_every_command_matches_redis(servers: tuple[int, int]) -> None:
    # One by one first, so that a difference names its command (SUBSCRIBE with no
    # channel fails its arity check before the epoll backend could refuse it).
    for command in SCRIPT:
        redis, kv = both(servers, encode(*command))
        assert kv == redis, command
    redis, kv = both(servers, script_bytes(SCRIPT))  # and as one pipeline
    assert kv == redis


def test_minikv_hello_and_client_id_match_redis_but_the_id(servers: tuple[int, int]) -> None:
    script = [("HELLO",), ("HELLO", "2"), ("HELLO", "2", "SETNAME", "n"), ("CLIENT", "ID")]
    script += [("HELLO", "2", "AUTH", "default", "any"), ("CLIENT", "GETNAME")]
    redis, kv = both(servers, script_bytes(script))
    # Client ids count connections, and redis-server makes some of its own.
    mask = re.compile(rb"(\$2\r\nid\r\n|\*0\r\n):[0-9]+\r\n")
    masked = mask.sub(rb"\1:ID\r\n", kv)
    assert masked.count(b":ID\r\n") == 5
    assert masked == mask.sub(rb"\1:ID\r\n", redis)


def test_minikv_hello_3_falls_back_to_resp2(servers: tuple[int, int]) -> None:
    # minikv speaks RESP2 only: HELLO 3 gets the answer Redis gives for a protocol
    # version it does not know, and clients go on in RESP2.
    _, kv = both(servers, encode("HELLO", "3") + encode("PING"))
    assert kv.startswith(b"-NOPROTO unsupported protocol version\r\n+PONG\r\n")


INLINE = [
    b"PING\r\n",
    b"PING\n",
    b"ping hello\r\n",
    b"  SET   k   v  \r\n",
    b"GET k\r\n",
    b'SET q "a b\\x41\\n\\t\\"c"\r\n',
    b"GET q\r\n",
    b"SET q 'it\\'s'\r\n",
    b"GET q\r\n",
    b'SET q "ab"cd\r\n',
    b"\r\n",
    b"\n",
    b"   \r\n",
    b"ECHO a\x0bb\r\n",
    b"ECHO \x0ba\r\n",
    b"ECHO a\tb\r\n",
    b'ECHO "\\xZZ"\r\n',
    b'ECHO "x\\"\r\n',
    b"ECHO x\r\r\n",
    b"NOSUCH a b\r\n",
    b"MGET q k\r\n",
]


def test_minikv_inline_commands_match_redis(servers: tuple[int, int]) -> None:
    for line in INLINE:
        redis, kv = both(servers, line)
        assert kv == redis, line
    redis, kv = both(servers, b"".join(INLINE))
    assert kv == redis


# Requests Redis refuses with an error, then closes (each sent on a new connection).
PROTOCOL_ERRORS = [
    b"*abc\r\n",
    b"*1\r\n$abc\r\n",
    b"*1\r\n$-1\r\n",
    b"*1\r\n$2000000\r\n",  # over proto-max-bulk-len (1mb in these tests)
    b"*3000000000\r\n",
    b"*+1\r\n",
    b"*01\r\n$4\r\nPING\r\n",
    b"*1\r\n+PING\r\n",
    b"*2\r\n$4\r\nECHO\r\n:5\r\n",
    b"*1\r\n\xff4\r\nPING\r\n",
    b"*1\r\n\n4\r\nPING\r\n",
    b'ECHO "unbalanced\r\n',
    b"ECHO 'unbalanced\r\n",
    b'ECHO "a"b\r\n',
    b"PING\r\n" + b"x" * 70000,  # an inline request that never ends
    b"*" + b"1" * 70000,
    b"*1\r\n$" + b"1" * 70000,
    b"PING\x00\r\n" + b"x" * 70000,  # strchr() stops at the NUL: the line never ends
    b"*1\r\n$\x001\r\n" + b"x" * 70000,
    encode("PING") + b"*x\r\n" + encode("PING"),  # what came before is answered
    encode("SET", "a", "1") + encode("QUIT") + b"*x\r\n",  # QUIT first: no error
    encode("QUIT") + encode("PING"),
    b"POST / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: example\r\n\r\n",
]

# Requests that look wrong but that Redis answers, and goes on.
QUIRKS = [
    b"*-5\r\n*0\r\nPING\r\n",  # multibulk counts <= 0 are empty commands
    b"*1\r\n$4\r\nPINGxx*1\r\n$4\r\nPING\r\n",  # the CRLF after a bulk is not checked
    b"*1\rx$4\r\nPING\r\n",  # nor the LF after a count's CR
    b"*1\r\n$0\r\n\r\n",  # an empty command name
]


@pytest.mark.parametrize("request_bytes", QUIRKS, ids=range(len(QUIRKS)))
def test_minikv_protocol_quirks_match_redis(servers: tuple[int, int], request_bytes: bytes) -> None:
    tail, marker = sentinel("quirk")
    replies = [exchange(port, request_bytes + tail, until=marker, timeout=2) for port in servers]
    assert replies[1] == replies[0]


@pytest.mark.parametrize("request_bytes", PROTOCOL_ERRORS, ids=range(len(PROTOCOL_ERRORS)))
def test_minikv_protocol_errors_match_redis(servers: tuple[int, int], request_bytes: bytes) -> None:
    redis, kv = both(servers, request_bytes, until_end=False)
    assert kv == redis


def test_minikv_query_buffer_limit_closes_like_redis() -> None:
    # A bulk under proto-max-bulk-len whose request outgrows client-query-buffer-limit:
    # the connection is closed without a reply (after answering what came before).
    limits = ("--proto-max-bulk-len", "4mb", "--client-query-buffer-limit", "2mb")
    data = encode("PING") + b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3000000\r\n" + b"v" * 3000002
    with redis_server(*limits) as redis_port, minikv_process(*limits) as (kv_port, _):
        redis, kv = (exchange(port, data + encode("PING")) for port in (redis_port, kv_port))
    assert kv == redis == b"+PONG\r\n"


def random_command(rng: random.Random) -> tuple[str, ...]:
    key = f"key:{rng.randrange(20)}"
    choices: list[tuple[str, ...]] = [
        ("SET", key, str(rng.randrange(-1000, 1000))),
        ("SET", key, "v" * rng.randrange(50), rng.choice(["NX", "XX", "GET"])),
        ("SET", key, "1", "EX", str(rng.randrange(100, 1000))),
        ("GET", key),
        ("INCR", key),
        ("DECR", key),
        ("INCRBY", key, str(rng.randrange(-(10**6), 10**6))),
        ("DEL", key, f"key:{rng.randrange(20)}"),
        ("EXISTS", key, key),
        ("MSET", key, "1", f"key:{rng.randrange(20)}", "2"),
        ("MGET", key, f"key:{rng.randrange(20)}"),
        ("EXPIRE", key, str(rng.randrange(100, 1000))),
        ("TTL", key),
        ("DBSIZE",),
        ("PING",),
        ("ECHO", "e" * rng.randrange(100)),
        ("PUBLISH", "ch", "m"),
        ("NOSUCH", key),
        ("LPUSH", f"list:{rng.randrange(3)}", "a", "b"),
        ("RPOP", f"list:{rng.randrange(3)}"),
        ("LRANGE", f"list:{rng.randrange(3)}", "0", "-1"),
        ("GET", f"list:{rng.randrange(3)}"),
    ]
    return rng.choice(choices)


def test_minikv_pipeline_of_2000_commands_matches_redis(servers: tuple[int, int]) -> None:
    rng = random.Random(17)
    script = [random_command(rng) for _ in range(2000)]
    redis, kv = both(servers, script_bytes(script))
    assert kv.count(b"\r\n") > 2000
    assert kv == redis


def test_minikv_any_chunking_gives_redis_replies(servers: tuple[int, int]) -> None:
    # The same script sent in small random pieces (each server parses partial requests).
    rng = random.Random(3)
    inline = [line for line in INLINE if b'"' not in line]  # no unbalanced quotes
    data = script_bytes(SCRIPT[:60]) + b"".join(inline) + sentinel("chunks")[0]
    marker = sentinel("chunks")[1]
    replies = []
    for port in servers:
        exchange(port, encode("FLUSHALL"), until=b"+OK\r\n")
        received = bytearray()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            view = memoryview(data)
            while view:
                size = rng.randrange(1, 40)
                sock.sendall(view[:size])
                view = view[size:]
                time.sleep(0.0005 if rng.random() < 0.05 else 0)  # real sleep: split segments
            while not received.endswith(marker):
                chunk = sock.recv(65536)
                assert chunk, "closed early"
                received += chunk
        replies.append(bytes(received))
    assert replies[1] == replies[0]


def _read_until(sock: socket.socket, marker: bytes, received: bytearray) -> bytes:
    # Reads until ``marker`` ends what was received; returns (and clears) it all.
    while not received.endswith(marker):
        chunk = sock.recv(65536)
        assert chunk, f"closed early after {bytes(received[-200:])!r}"
        received += chunk
    out = bytes(received)
    received.clear()
    return out


def pubsub_session(port: int) -> list[bytes]:
    """A subscriber and a publisher, step by step; everything each received."""
    exchange(port, encode("FLUSHALL"), until=b"+OK\r\n")
    steps = []
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as sub,
        socket.create_connection(("127.0.0.1", port), timeout=10) as pub,
    ):
        received = bytearray()
        sub.sendall(encode("SUBSCRIBE", "ch1", "ch2", "ch1") + encode("PING"))
        steps.append(_read_until(sub, b"$4\r\npong\r\n$0\r\n\r\n", received))
        sub.sendall(
            encode("PING", "x")
            + encode("GET", "k")
            + encode("SET", "k")
            + encode("CLIENT", "SETNAME", "a")
            + encode("HELLO", "2")
            + encode("NOSUCH")
            + encode("UNSUBSCRIBE", "ch2", "nosuch")
            + encode("PING", "end")
        )
        steps.append(_read_until(sub, b"$3\r\nend\r\n", received))
        messages = [b"message %d " % i + bytes([i % 256]) * (i % 50) for i in range(200)]
        pub.sendall(b"".join(encode("PUBLISH", "ch1", m) for m in messages))
        pub.sendall(encode("PUBLISH", "ch2", "nobody") + encode("ECHO", "done"))
        steps.append(_read_until(pub, b"$4\r\ndone\r\n", bytearray()))
        last = messages[-1]
        steps.append(_read_until(sub, b"$%d\r\n%s\r\n" % (len(last), last), received))
        sub.sendall(encode("UNSUBSCRIBE") + encode("PING") + encode("GET", "k"))
        steps.append(_read_until(sub, b"$-1\r\n", received))
    return steps


def test_minikv_pubsub_exchange_of_200_messages_matches_redis(
    servers: tuple[int, int], request: pytest.FixtureRequest
) -> None:
    if request.node.callspec.params["servers"] == "epoll":
        pytest.skip("pub/sub needs minikv's trio backend")
    redis, kv = (pubsub_session(port) for port in servers)
    assert kv[3].count(b"$7\r\nmessage\r\n") == 200
    assert kv == redis
