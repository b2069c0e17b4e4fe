"""Process-level chaos: SIGKILL a loaded server, then restart it on the same port at once.

``clients`` connections are served once and left open; the server is killed (SIGKILL
by pid) and reaped; half of the clients close, so the dead server's ends of their
connections sit in TIME_WAIT and the others' in FIN_WAIT2; and a new server is started
on the same port at once. It must bind (SO_REUSEADDR) and serve a new connection.
"""

from __future__ import annotations

import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .._server_processes import BenchError, ServerProcess, running_server
from ._suite_plan import Cell, ServerSpec, SuitePlan
from ._suite_signals import first_line

CONNECT_TIMEOUT = 2.0
KILL_WAIT = 10.0  # SIGKILL cannot be ignored; this only bounds a wedged kernel
RESTART_SERVE = 5.0
POLL = 0.01
# /proc/net/tcp state codes worth naming (include/net/tcp_states.h).
_TCP_STATES = {
    "01": "ESTABLISHED",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
}


def tcp_states(port: int) -> dict[str, int]:
    """Count this machine's TCP sockets whose local port is ``port``, by state."""
    states: Counter[str] = Counter()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:  # no IPv6 on this kernel
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                states[_TCP_STATES.get(fields[3], fields[3])] += 1
    return dict(states)


def _open_served(port: int, count: int) -> tuple[list[socket.socket], int]:
    # Connect ``count`` clients, one echo each (all within CONNECT_TIMEOUT); the caller
    # closes the sockets. Returns them and how many were served.
    socks: list[socket.socket] = []
    served = 0
    deadline = time.monotonic() + CONNECT_TIMEOUT
    try:
        for _ in range(count):
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT)
            except (TimeoutError, ConnectionError):
                continue  # not connected: counted as not served, not raised
            socks.append(sock)
            sock.sendall(b"x")
        for sock in socks:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                served += sock.recv(1) == b"x"
            except (TimeoutError, ConnectionError):
                continue  # not served in time: counted, not raised
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks, served


def _echo_on_new_connection(port: int, within: float) -> float | None:
    # Seconds until a new connection gets its echo, or None past ``within``.
    start = time.monotonic()
    for _ in range(int(within / POLL) + 1):
        remaining = within - (time.monotonic() - start)
        if remaining <= 0:
            break
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=remaining) as sock:
                sock.sendall(b"back")
                if sock.recv(4) == b"back":
                    return round(time.monotonic() - start, 3)
        except (TimeoutError, ConnectionError):
            time.sleep(POLL)  # polling a server that is starting up
    return None


def _kill_and_restart(
    spec: ServerSpec, first: ServerProcess, socks: list[socket.socket], cpu: int | None
) -> dict[str, Any]:
    killed = time.monotonic()
    first.proc.kill()  # SIGKILL, by pid
    first.proc.wait(KILL_WAIT)
    for sock in socks[::2]:  # their dead server ends go to TIME_WAIT; the rest FIN_WAIT2
        sock.close()
    facts: dict[str, Any] = {"port": first.port, "states_at_restart": tcp_states(first.port)}
    try:
        with running_server(f"{spec.name} (restarted)", spec.command(first.port), cpu):
            facts["rebound_after"] = round(time.monotonic() - killed, 3)
            served = _echo_on_new_connection(first.port, RESTART_SERVE)
            facts["served_after"] = (
                None if served is None else round(served + facts["rebound_after"], 3)
            )
    except BenchError as exc:
        facts["restart_error"] = " ".join(str(exc).split())[-300:]
    return facts


def sigkill_restart_cell(spec: ServerSpec, plan: SuitePlan, *, cpu: int | None) -> Cell:
    """SIGKILL a loaded server, start a new one on the same port at once (the module)."""
    began = time.monotonic()
    try:
        with running_server(spec.name, spec.command(0), cpu) as first:
            socks, served = _open_served(first.port, plan.restart_clients)
            try:
                facts = _kill_and_restart(spec, first, socks, cpu)
            finally:
                for sock in socks:
                    sock.close()
    except BenchError as exc:
        return Cell.judged(spec.name, "sigkill-restart", "did not start", [first_line(exc)])
    failures = []
    if served < plan.restart_clients:
        failures.append(f"before the kill only {served}/{plan.restart_clients} clients were served")
    if "restart_error" in facts:
        failures.append(f"the restart on port {facts['port']} failed: {facts['restart_error']}")
    elif facts["served_after"] is None:
        failures.append(f"the restarted server served no echo within {RESTART_SERVE:g} s")
    waiting = facts["states_at_restart"].get("TIME_WAIT", 0)
    after = facts.get("served_after")
    figure = "-" if after is None else f"served {after:.2f}s, {waiting} TIME_WAIT"
    return Cell.judged(
        spec.name,
        "sigkill-restart",
        figure,
        failures,
        served_before=served,
        **facts,
        seconds=round(time.monotonic() - began, 2),
    )
