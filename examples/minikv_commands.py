"""minikv's commands: the key space, pub/sub fan-out and the command table, sans-IO.

Nothing here does I/O or reads a clock of its own: a :class:`Session` (one per client
connection) turns one parsed command (a list of ``bytes``, from
:class:`triosrv.protocols.RespParser`) into the RESP2 reply bytes, against a shared
:class:`Store` whose clock is a callable (milliseconds, Unix time). Pub/sub messages
for a subscribed session go to its :class:`Outbox`, which the server drains.

Every reply, error strings included, is what Redis 7.0 sends for the same command
(``src/t_string.c``, ``db.c``, ``expire.c``, ``pubsub.c``, ``server.c``); the tests
compare minikv with a real ``redis-server`` byte for byte. Where Redis formats a
client's argument with ``%s`` the argument is cut at its first NUL byte, as C does.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import NamedTuple

import minikv_lists
from minikv_state import Broker, Outbox, Settings, Store

from triosrv.protocols import (
    RESP_NULL_BULK,
    parse_resp_int,
    resp_array,
    resp_bulk,
    resp_error,
    resp_integer,
)
from triosrv.protocols import (
    RESP_OK as OK,
)

Handler = Callable[["Session", list[bytes]], bytes]

SYNTAX_ERROR = b"-ERR syntax error\r\n"
WRONGTYPE = b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
NOT_INTEGER = b"-ERR value is not an integer or out of range\r\n"
PONG = b"+PONG\r\n"
ZERO = b":0\r\n"
ONE = b":1\r\n"
LLONG_MIN = -(2**63)
LLONG_MAX = 2**63 - 1

#: What HELLO reports (clients check the version for features); RESP2 only.
REDIS_VERSION = b"7.0.15"


def c_str(arg: bytes) -> bytes:
    """``arg`` as C's ``%s`` and ``strcasecmp`` see it: up to its first NUL."""
    return arg.split(b"\0", 1)[0]


class Command(NamedTuple):
    """One entry of the command table: Redis's arity rule (``n`` exactly, ``-n`` at
    least n), its full name in errors, whether a subscribed client may call it, and,
    for a container (CLIENT, CONFIG, COMMAND), its subcommands."""

    handler: Handler
    arity: int
    name: str
    in_pubsub: bool = False
    subcommands: dict[bytes, Command] | None = None


class Session:
    """One client connection's state; :meth:`execute` runs one command.

    ``closing`` becomes true after QUIT (or a refused ``POST``/``Host:`` request, which
    also sets ``silent``: close without sending anything more). ``outbox`` is None
    until the server gives the session one (:meth:`subscribe_ready`); a session
    without one cannot SUBSCRIBE (the ``epoll`` backend's key-value subset).
    """

    __slots__ = (
        "broker",
        "channels",
        "closing",
        "id",
        "name",
        "outbox",
        "settings",
        "silent",
        "store",
    )

    def __init__(self, store: Store, broker: Broker, settings: Settings) -> None:
        self.store = store
        self.broker = broker
        self.settings = settings
        self.id = next(broker.client_ids)
        self.name = b""
        self.channels: dict[bytes, None] = {}
        self.closing = False
        self.silent = False
        self.outbox: Outbox | None = None

    def __hash__(self) -> int:
        return self.id

    def execute(self, argv: list[bytes]) -> bytes:
        """The reply to one command (``argv`` non-empty)."""
        command = COMMANDS.get(argv[0])
        if command is None:
            command = COMMANDS.get(argv[0].lower())
            if command is None:
                return self._unknown(argv)
        handler, arity, name, in_pubsub, subcommands = command
        if subcommands is not None and len(argv) > 1:
            sub = subcommands.get(argv[1].lower())
            if sub is None:
                return resp_error(
                    b"unknown subcommand '"
                    + c_str(argv[1])[:128]
                    + b"'. Try "
                    + name.upper().encode()
                    + b" HELP."
                )
            handler, arity, name, in_pubsub, _ = sub
        # Redis's arity rule: exactly ``arity`` words, or at least ``-arity``.
        if arity != len(argv) and (arity > 0 or len(argv) < -arity):
            return wrong_arity(name)
        if self.channels and not in_pubsub:
            return resp_error(
                f"Can't execute '{name}': only (P|S)SUBSCRIBE / "
                "(P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
            )
        return handler(self, argv)

    def _unknown(self, argv: list[bytes]) -> bytes:
        if c_str(argv[0]).lower() in (b"host:", b"post"):
            # Redis closes on what looks like HTTP sent to it (a cross-protocol attack).
            self.closing = self.silent = True
            return b""
        args = b""
        for arg in argv[1:]:
            if len(args) >= 128:
                break
            args += b"'" + c_str(arg)[: 128 - len(args)] + b"' "
        return resp_error(
            b"unknown command '" + c_str(argv[0])[:128] + b"', with args beginning with: " + args
        )


def wrong_arity(name: str) -> bytes:
    """Redis's arity error for the command's full name (``'config|get'``)."""
    return b"-ERR wrong number of arguments for '" + name.encode() + b"' command\r\n"


# -- connection and server commands ------------------------------------------------------


def cmd_ping(s: Session, argv: list[bytes]) -> bytes:
    if len(argv) > 2:
        return wrong_arity("ping")
    if s.channels:
        return resp_array([b"pong", argv[1] if len(argv) == 2 else b""])
    return PONG if len(argv) == 1 else resp_bulk(argv[1])


def cmd_echo(s: Session, argv: list[bytes]) -> bytes:
    return resp_bulk(argv[1])


def cmd_quit(s: Session, argv: list[bytes]) -> bytes:
    s.closing = True
    return OK


def cmd_hello(s: Session, argv: list[bytes]) -> bytes:
    # RESP2 only: HELLO 3 gets Redis's answer for a version it does not speak, and
    # clients (redis-py, redis-cli -3) fall back to RESP2.
    if len(argv) >= 2:
        version = parse_resp_int(argv[1])
        if version is None:
            return b"-ERR Protocol version is not an integer or out of range\r\n"
        if version != 2:
            return b"-NOPROTO unsupported protocol version\r\n"
    j = 2
    while j < len(argv):
        more = len(argv) - 1 - j
        option = c_str(argv[j]).lower()
        if option == b"auth" and more >= 2:
            # The only user is "default", without a password (Redis's default).
            if argv[j + 1] != b"default":
                return b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
            j += 3
            continue
        if option == b"setname" and more:
            error = _set_name(s, argv[j + 1])
            if error:
                return error
            j += 2
            continue
        return resp_error(b"Syntax error in HELLO option '" + c_str(argv[j]) + b"'")
    return resp_array(
        [
            b"server",
            b"redis",
            b"version",
            REDIS_VERSION,
            b"proto",
            2,
            b"id",
            s.id,
            b"mode",
            b"standalone",
            b"role",
            b"master",
            b"modules",
            [],
        ]
    )


def _set_name(s: Session, name: bytes) -> bytes:
    if any(b < 0x21 or b > 0x7E for b in name):
        return b"-ERR Client names cannot contain spaces, newlines or special characters.\r\n"
    s.name = name
    return b""


def wrong_arity_only(s: Session, argv: list[bytes]) -> bytes:
    # CLIENT and CONFIG alone fail their arity check (-2) before getting here.
    raise AssertionError("unreachable")


def cmd_client_setname(s: Session, argv: list[bytes]) -> bytes:
    return _set_name(s, argv[2]) or OK


def cmd_client_getname(s: Session, argv: list[bytes]) -> bytes:
    return resp_bulk(s.name or None)


def cmd_client_id(s: Session, argv: list[bytes]) -> bytes:
    return resp_integer(s.id)


CLIENT = {
    b"setname": Command(cmd_client_setname, 3, "client|setname"),
    b"getname": Command(cmd_client_getname, 2, "client|getname"),
    b"id": Command(cmd_client_id, 2, "client|id"),
}


def cmd_config_get(s: Session, argv: list[bytes]) -> bytes:
    config = s.settings.config()
    found: dict[bytes, bytes] = {}
    for pattern in argv[2:]:
        pattern = c_str(pattern).lower()
        if not any(ch in pattern for ch in b"[*?"):
            if pattern in config:
                found.setdefault(pattern, config[pattern])
            continue
        glob = pattern.decode("latin-1").replace("[^", "[!")
        for name, value in config.items():
            if fnmatch.fnmatchcase(name.decode(), glob):
                found.setdefault(name, value)
    return resp_array([item for pair in found.items() for item in pair])


CONFIG = {b"get": Command(cmd_config_get, -3, "config|get")}


def cmd_command_docs(s: Session, argv: list[bytes]) -> bytes:
    # redis-cli asks for every command's documentation when it starts interactively;
    # an empty map makes it use its built-in help, with no error shown.
    return b"*0\r\n"


def cmd_command_count(s: Session, argv: list[bytes]) -> bytes:
    return resp_integer(len(COMMANDS))


COMMAND = {
    b"docs": Command(cmd_command_docs, -2, "command|docs"),
    b"count": Command(cmd_command_count, 2, "command|count"),
}


def cmd_command(s: Session, argv: list[bytes]) -> bytes:
    # COMMAND alone lists every command's details; minikv has none to give.
    return b"*0\r\n"


def cmd_dbsize(s: Session, argv: list[bytes]) -> bytes:
    return resp_integer(s.store.live_size())


def cmd_flushall(s: Session, argv: list[bytes]) -> bytes:
    if len(argv) == 2 and c_str(argv[1]).lower() in (b"sync", b"async"):
        pass
    elif len(argv) != 1:
        return SYNTAX_ERROR
    s.store.data.clear()
    s.store.expires.clear()
    return OK


# -- strings ---------------------------------------------------------------------------------

NX, XX, GET, KEEPTTL, EX, PX, EXAT, PXAT = (1 << i for i in range(8))
# SET's options: (flag, takes a time, the flags it cannot follow).
_SET_OPTIONS = {
    b"nx": (NX, False, XX),
    b"xx": (XX, False, NX),
    b"get": (GET, False, 0),
    b"keepttl": (KEEPTTL, False, EX | PX | EXAT | PXAT),
    b"ex": (EX, True, KEEPTTL | EXAT | PX | PXAT),
    b"px": (PX, True, KEEPTTL | EX | EXAT | PXAT),
    b"exat": (EXAT, True, KEEPTTL | EX | PX | PXAT),
    b"pxat": (PXAT, True, KEEPTTL | EX | EXAT | PX),
}


def cmd_set(s: Session, argv: list[bytes]) -> bytes:
    key, value = argv[1], argv[2]
    if len(argv) == 3:  # the common case: no options
        s.store.data[key] = value
        if s.store.expires:
            s.store.expires.pop(key, None)
        return OK
    flags, when = _set_options(argv)
    if flags < 0:
        return SYNTAX_ERROR
    at: int | None = None
    if flags & (EX | PX | EXAT | PXAT):
        at = _expire_at(s, when, flags)
        if at is None:
            return NOT_INTEGER
        if at <= 0:
            return b"-ERR invalid expire time in 'set' command\r\n"
    store = s.store
    old = store.get(key)
    if flags & GET and old is not None and old.__class__ is not bytes:
        return WRONGTYPE
    if (flags & NX and old is not None) or (flags & XX and old is None):
        return resp_bulk(old) if flags & GET else RESP_NULL_BULK
    store.data[key] = value
    if at is not None:
        store.expires[key] = at
    elif not flags & KEEPTTL:
        store.expires.pop(key, None)
    return resp_bulk(old) if flags & GET else OK


def _set_options(argv: list[bytes]) -> tuple[int, bytes]:
    flags, when, j = 0, b"", 3
    while j < len(argv):
        option = _SET_OPTIONS.get(c_str(argv[j]).lower())
        if option is None or flags & option[2] or (option[1] and j == len(argv) - 1):
            return -1, b""
        flags |= option[0]
        if option[1]:
            when = argv[j + 1]
            j += 1
        j += 1
    return flags, when


def _expire_at(s: Session, when: bytes, flags: int) -> int | None:
    # Redis's getExpireMillisecondsOrReply: None for "not an integer", <= 0 for an
    # invalid expire time, else the absolute Unix time in milliseconds.
    value = parse_resp_int(when)
    if value is None:
        return None
    if value <= 0 or (flags & (EX | EXAT) and value > LLONG_MAX // 1000):
        return 0
    if flags & (EX | EXAT):
        value *= 1000
    if flags & (EX | PX):
        value += s.store.clock()
        if value > LLONG_MAX:  # C wraps around to a negative number here
            return 0
    return value


def cmd_get(s: Session, argv: list[bytes]) -> bytes:
    store = s.store
    value = store.get(argv[1]) if store.expires else store.data.get(argv[1])
    if value.__class__ is not bytes:
        return RESP_NULL_BULK if value is None else WRONGTYPE
    return b"$%d\r\n%s\r\n" % (len(value), value)


def cmd_mget(s: Session, argv: list[bytes]) -> bytes:
    get = s.store.get
    values = [get(key) for key in argv[1:]]
    return resp_array([v if v.__class__ is bytes else None for v in values])


def cmd_mset(s: Session, argv: list[bytes]) -> bytes:
    if len(argv) % 2 == 0:
        return wrong_arity("mset")
    store = s.store
    for j in range(1, len(argv), 2):
        store.data[argv[j]] = argv[j + 1]
        store.expires.pop(argv[j], None)
    return OK


def cmd_del(s: Session, argv: list[bytes]) -> bytes:
    delete = s.store.delete
    return resp_integer(sum(1 for key in argv[1:] if delete(key)))


def cmd_exists(s: Session, argv: list[bytes]) -> bytes:
    get = s.store.get
    return resp_integer(sum(1 for key in argv[1:] if get(key) is not None))


def _incr_by(s: Session, key: bytes, by: int) -> bytes:
    store = s.store
    old = store.get(key) if store.expires else store.data.get(key)
    if old is None:
        value = by
    elif old.__class__ is not bytes:
        return WRONGTYPE
    elif 0 < len(old) < 19 and old.isdigit() and (old[0] != 48 or len(old) == 1):
        value = int(old) + by  # the common case: a small non-negative number
    else:
        parsed = parse_resp_int(old)
        if parsed is None:
            return NOT_INTEGER
        value = parsed + by
    if value < LLONG_MIN or value > LLONG_MAX:
        return b"-ERR increment or decrement would overflow\r\n"
    text = b"%d" % value
    store.data[key] = text
    return b":" + text + b"\r\n"


def cmd_incr(s: Session, argv: list[bytes]) -> bytes:
    return _incr_by(s, argv[1], 1)


def cmd_decr(s: Session, argv: list[bytes]) -> bytes:
    return _incr_by(s, argv[1], -1)


def cmd_incrby(s: Session, argv: list[bytes]) -> bytes:
    by = parse_resp_int(argv[2])
    return NOT_INTEGER if by is None else _incr_by(s, argv[1], by)


def cmd_decrby(s: Session, argv: list[bytes]) -> bytes:
    by = parse_resp_int(argv[2])
    if by is None:
        return NOT_INTEGER
    if by == LLONG_MIN:
        return b"-ERR decrement would overflow\r\n"
    return _incr_by(s, argv[1], -by)


# -- expiry ----------------------------------------------------------------------------------

_EXPIRE_OPTIONS = {b"nx": 1, b"xx": 2, b"gt": 4, b"lt": 8}


def cmd_expire(s: Session, argv: list[bytes]) -> bytes:
    flags = 0
    for arg in argv[3:]:
        flag = _EXPIRE_OPTIONS.get(c_str(arg).lower())
        if flag is None:
            return resp_error(b"Unsupported option " + c_str(arg))
        flags |= flag
    if flags & 1 and flags & 14:
        return b"-ERR NX and XX, GT or LT options at the same time are not compatible\r\n"
    if flags & 12 == 12:
        return b"-ERR GT and LT options at the same time are not compatible\r\n"
    seconds = parse_resp_int(argv[2])
    if seconds is None:
        return NOT_INTEGER
    store = s.store
    now = store.clock()
    if not -(LLONG_MAX // 1000) <= seconds <= LLONG_MAX // 1000 or (
        seconds * 1000 > LLONG_MAX - now
    ):
        return b"-ERR invalid expire time in 'expire' command\r\n"
    when = seconds * 1000 + now
    key = argv[1]
    if store.get(key) is None:
        return ZERO
    current = store.expires.get(key, -1)
    if (
        (flags & 1 and current != -1)
        or (flags & 2 and current == -1)
        or (flags & 4 and (when <= current or current == -1))
        or (flags & 8 and current != -1 and when >= current)
    ):
        return ZERO
    if when <= now:
        store.delete(key)
    else:
        store.expires[key] = when
    return ONE


def cmd_ttl(s: Session, argv: list[bytes]) -> bytes:
    store = s.store
    key = argv[1]
    if store.get(key) is None:
        return b":-2\r\n"
    at = store.expires.get(key)
    if at is None:
        return b":-1\r\n"
    return resp_integer((max(0, at - store.clock()) + 500) // 1000)


# -- pub/sub ---------------------------------------------------------------------------------


def cmd_publish(s: Session, argv: list[bytes]) -> bytes:
    return resp_integer(s.broker.publish(argv[1], argv[2]))


def cmd_subscribe(s: Session, argv: list[bytes]) -> bytes:
    if s.outbox is None:
        return (
            b"-ERR SUBSCRIBE needs minikv's trio backend (this one serves the key-value subset)\r\n"
        )
    channels = s.broker.channels
    replies = []
    for channel in argv[1:]:
        if channel not in s.channels:
            s.channels[channel] = None
            channels.setdefault(channel, {})[s] = None
        replies.append(
            b"*3\r\n$9\r\nsubscribe\r\n" + resp_bulk(channel) + resp_integer(len(s.channels))
        )
    return b"".join(replies)


def cmd_unsubscribe(s: Session, argv: list[bytes]) -> bytes:
    targets = argv[1:] or list(s.channels)
    if not targets:
        return b"*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n"
    replies = []
    for channel in targets:
        if channel in s.channels:
            del s.channels[channel]
            s.broker.remove(channel, s)
        replies.append(
            b"*3\r\n$11\r\nunsubscribe\r\n" + resp_bulk(channel) + resp_integer(len(s.channels))
        )
    return b"".join(replies)


COMMANDS: dict[bytes, Command] = {
    b"ping": Command(cmd_ping, -1, "ping", in_pubsub=True),
    b"echo": Command(cmd_echo, 2, "echo"),
    b"quit": Command(cmd_quit, -1, "quit", in_pubsub=True),
    b"hello": Command(cmd_hello, -1, "hello"),
    b"client": Command(wrong_arity_only, -2, "client", subcommands=CLIENT),
    b"config": Command(wrong_arity_only, -2, "config", subcommands=CONFIG),
    b"command": Command(cmd_command, -1, "command", subcommands=COMMAND),
    b"dbsize": Command(cmd_dbsize, 1, "dbsize"),
    b"flushall": Command(cmd_flushall, -1, "flushall"),
    b"set": Command(cmd_set, -3, "set"),
    b"get": Command(cmd_get, 2, "get"),
    b"mget": Command(cmd_mget, -2, "mget"),
    b"mset": Command(cmd_mset, -3, "mset"),
    b"del": Command(cmd_del, -2, "del"),
    b"exists": Command(cmd_exists, -2, "exists"),
    b"incr": Command(cmd_incr, 2, "incr"),
    b"decr": Command(cmd_decr, 2, "decr"),
    b"incrby": Command(cmd_incrby, 3, "incrby"),
    b"decrby": Command(cmd_decrby, 3, "decrby"),
    b"expire": Command(cmd_expire, -3, "expire"),
    b"ttl": Command(cmd_ttl, 2, "ttl"),
    b"publish": Command(cmd_publish, 3, "publish"),
    b"subscribe": Command(cmd_subscribe, -2, "subscribe", in_pubsub=True),
    b"unsubscribe": Command(cmd_unsubscribe, -1, "unsubscribe", in_pubsub=True),
    b"lpush": Command(minikv_lists.cmd_lpush, -3, "lpush"),
    b"rpush": Command(minikv_lists.cmd_rpush, -3, "rpush"),
    b"lpop": Command(minikv_lists.cmd_lpop, -2, "lpop"),
    b"rpop": Command(minikv_lists.cmd_rpop, -2, "rpop"),
    b"llen": Command(minikv_lists.cmd_llen, 2, "llen"),
    b"lrange": Command(minikv_lists.cmd_lrange, 4, "lrange"),
}
# Clients send names in upper case (redis-benchmark, redis-py) or lower case: both are
# found at the first try; other spellings take a lower() first.
COMMANDS.update({name.upper(): command for name, command in list(COMMANDS.items())})
