"""minikv's lists: LPUSH, RPUSH, LPOP, RPOP, LLEN, LRANGE, as Redis 7.0's t_list.c.

A second value type, so that commands meet keys of the wrong kind as in Redis: GET or
INCR on a list, LPUSH on a string, answer ``WRONGTYPE``. A list is a ``deque`` of
``bytes``; a list that becomes empty is removed, as Redis removes it.
"""

from __future__ import annotations

import itertools
from collections import deque
from typing import TYPE_CHECKING

from triosrv.protocols import parse_resp_int, resp_array, resp_bulk, resp_integer

if TYPE_CHECKING:
    from minikv_commands import Session

WRONGTYPE = b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
NOT_INTEGER = b"-ERR value is not an integer or out of range\r\n"
NOT_POSITIVE = b"-ERR value is out of range, must be positive\r\n"
EMPTY_ARRAY = b"*0\r\n"
LONG_MAX = 2**63 - 1


def _push(s: Session, argv: list[bytes], left: bool) -> bytes:
    store = s.store
    value = store.get(argv[1])
    if value is None:
        value = store.data[argv[1]] = deque()
    elif not isinstance(value, deque):
        return WRONGTYPE
    if left:
        value.extendleft(argv[2:])
    else:
        value.extend(argv[2:])
    return resp_integer(len(value))


def cmd_lpush(s: Session, argv: list[bytes]) -> bytes:
    return _push(s, argv, left=True)


def cmd_rpush(s: Session, argv: list[bytes]) -> bytes:
    return _push(s, argv, left=False)


def _pop(s: Session, argv: list[bytes], left: bool, name: str) -> bytes:
    if len(argv) > 3:
        return b"-ERR wrong number of arguments for '" + name.encode() + b"' command\r\n"
    count = None
    if len(argv) == 3:
        count = parse_resp_int(argv[2])
        if count is None or count < 0:
            return NOT_POSITIVE
    value = s.store.get(argv[1])
    if value is None:
        return b"*-1\r\n" if count is not None else b"$-1\r\n"
    if not isinstance(value, deque):
        return WRONGTYPE
    if count == 0:
        return EMPTY_ARRAY
    pop = value.popleft if left else value.pop
    items = [pop() for _ in range(min(count or 1, len(value)))]
    if not value:
        s.store.delete(argv[1])
    return resp_bulk(items[0]) if count is None else resp_array(items)


def cmd_lpop(s: Session, argv: list[bytes]) -> bytes:
    return _pop(s, argv, left=True, name="lpop")


def cmd_rpop(s: Session, argv: list[bytes]) -> bytes:
    return _pop(s, argv, left=False, name="rpop")


def cmd_llen(s: Session, argv: list[bytes]) -> bytes:
    value = s.store.get(argv[1])
    if value is None:
        return b":0\r\n"
    if not isinstance(value, deque):
        return WRONGTYPE
    return resp_integer(len(value))


def cmd_lrange(s: Session, argv: list[bytes]) -> bytes:
    start, end = parse_resp_int(argv[2]), parse_resp_int(argv[3])
    if start is None or end is None:
        return NOT_INTEGER
    value = s.store.get(argv[1])
    if value is None:
        return EMPTY_ARRAY
    if not isinstance(value, deque):
        return WRONGTYPE
    length = len(value)
    start = max(start + length if start < 0 else start, 0)
    end = end + length if end < 0 else end
    if start > end or start >= length:
        return EMPTY_ARRAY
    end = min(end, length - 1)
    return resp_array(list(itertools.islice(value, start, end + 1)))
