"""An echo load generator with its own event loop, for measuring servers on loopback.

`run_load` is the entry point. There are two engines with the same design: the Python
event loop in `_load_worker` (its module docstring explains how a run goes) and a C
program run by `_cengine`, which costs the generator less CPU per round trip. This module
checks the arguments, picks the engine, runs one worker in this process or forks several
(Python), or starts one C process per share of the connections, and merges what they
report into a `LoadResult`.

With ``processes > 1`` the workers are forked before any socket exists, each takes a share
of the connections and sends its statistics back through a pipe as a pickle; the parent
reads the pipes until the hard stop and kills (by pid) any worker still running then.
"""

from __future__ import annotations

import ipaddress
import os
import pickle
import random
import resource
import select
import signal
import socket
import time
import traceback
from array import array
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import attrs

from .._platform import usable_cpu_count
from ._cengine import ENGINES, LoadEngineError, engine_binary, run_c_engine
from ._load_worker import Plan, WorkerStats, run_worker

__all__ = ["LoadResult", "run_load"]

_POLL_SLICE = 0.1  # longest single wait for the workers' pipes
_HARD_STOP_SLACK = 2.0
_SATURATED = 0.9  # CPU seconds per wall second (per usable CPU) that means "saturated"


def _frozen_counts(counts: Mapping[str, int]) -> Mapping[str, int]:
    return MappingProxyType(dict(sorted(counts.items())))


@attrs.frozen(kw_only=True)
class LoadResult:
    """The outcome of one `run_load` call.

    Rates and percentiles cover the measured window only (after the warm-up); latencies
    are in microseconds. ``connect_ms`` runs from the start of the connects until every
    connection was established, ``first_echo_ms`` until every connection had received its
    first full echo (the connection-burst figure); both are ``None`` when some connection
    never got there. ``cpu_seconds`` is the generator's own CPU time over the window, and
    ``generator_saturated`` says that it used more than ~90% of the CPU available to it:
    then the figures describe the generator, not the server. ``engine`` names the
    generator that measured: ``"c"`` or ``"python"``.
    """

    connections: int
    size: int
    pipeline: int
    processes: int
    engine: str
    duration: float
    round_trips: int
    rtps: float
    p50_us: float
    p90_us: float
    p99_us: float
    p999_us: float
    max_us: float
    errors: int
    error_kinds: Mapping[str, int] = attrs.field(converter=_frozen_counts)
    connect_ms: float | None
    first_echo_ms: float | None
    cpu_seconds: float
    generator_saturated: bool

    def to_dict(self) -> dict[str, object]:
        """Return the fields as plain JSON-ready values."""
        fields = attrs.asdict(self, recurse=False)
        fields["error_kinds"] = dict(self.error_kinds)
        return fields


def _fork_worker(plan: Plan, connections: int) -> tuple[int, int]:
    # Fork one worker; it writes its pickled WorkerStats to the pipe and exits at once
    # with os._exit, so nothing of the parent (atexit hooks, buffered output) runs twice.
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_fd)
        return pid, read_fd
    status = 1
    try:
        os.close(read_fd)
        data = memoryview(pickle.dumps(run_worker(plan, connections)))
        while data:
            data = data[os.write(write_fd, data) :]
        status = 0
    except BaseException:
        # The parent counts a silent worker as "worker_failed"; say why on stderr.
        traceback.print_exc()
    finally:
        os._exit(status)


def _read_pipes(fds: list[int], deadline: float) -> dict[int, bytes]:
    # Read every pipe to EOF, but not past the deadline (a stuck worker is killed).
    chunks: dict[int, bytearray] = {fd: bytearray() for fd in fds}
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    open_fds = set(fds)
    while open_fds:
        left = deadline - time.perf_counter()
        if left <= 0:
            break
        for fd, _ in poller.poll(min(left, _POLL_SLICE) * 1000.0):
            data = os.read(fd, 1 << 16)
            chunks[fd] += data
            if not data:
                poller.unregister(fd)
                open_fds.discard(fd)
    return {fd: bytes(chunks[fd]) for fd in fds if fd not in open_fds}


def _reap(pid: int, deadline: float) -> None:
    # Wait for our own child; SIGKILL it (by its pid) if it is still running at the deadline.
    while time.perf_counter() < deadline:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def _run_forked(plan: Plan, shares: list[int], hard_stop: float) -> list[WorkerStats | None]:
    workers: list[tuple[int, int]] = []
    reap_by = time.perf_counter()  # on an exception (Ctrl-C included) kill the workers now
    try:
        for share in shares:
            workers.append(_fork_worker(plan, share))
        blobs = _read_pipes([fd for _, fd in workers], hard_stop)
        reap_by = hard_stop
    finally:
        for pid, fd in workers:
            os.close(fd)
            _reap(pid, reap_by)
    # Our own children wrote these bytes a moment ago: unpickling them is safe.
    return [pickle.loads(blobs[fd]) if blobs.get(fd) else None for _, fd in workers]


def _percentiles(samples: array[float]) -> list[float]:
    ordered = sorted(samples)
    if not ordered:
        return [0.0] * 5
    last = len(ordered) - 1
    ranks = [min(last, int(q * len(ordered))) for q in (0.5, 0.9, 0.99, 0.999)]
    return [ordered[r] * 1e6 for r in ranks] + [ordered[last] * 1e6]


def _merged_samples(stats: list[WorkerStats]) -> array[float]:
    # Workers may have thinned their samples differently: thin all to the coarsest
    # stride so that every worker's round trips weigh the same.
    coarsest = max(s.mask for s in stats) + 1
    merged = array("d")
    for s in stats:
        part = array("d")
        part.frombytes(s.samples)
        merged.extend(part[:: coarsest // (s.mask + 1)])
    return merged


def _merge_figure(values: list[float | None]) -> float | None:
    # The run's figure is the slowest worker's; unknown if any worker's is unknown.
    known = [v for v in values if v is not None]
    return max(known) if known and len(known) == len(values) else None


def _merge(stats: list[WorkerStats | None], *, size: int, pipeline: int, engine: str) -> LoadResult:
    done = [s for s in stats if s is not None]
    errors: dict[str, int] = {}
    for s in done:
        for kind, count in s.errors.items():
            errors[kind] = errors.get(kind, 0) + count
    if len(done) < len(stats):
        errors["worker_failed"] = len(stats) - len(done)
    window = max((s.window for s in done), default=0.0)
    cpu = sum(s.cpu_seconds for s in done)
    usable = min(len(stats), usable_cpu_count())
    p50, p90, p99, p999, top = _percentiles(_merged_samples(done)) if done else [0.0] * 5
    return LoadResult(
        connections=sum(s.connections for s in done),
        size=size,
        pipeline=pipeline,
        processes=len(stats),
        engine=engine,
        duration=window,
        round_trips=sum(s.round_trips for s in done),
        rtps=sum(s.round_trips / s.window for s in done if s.window > 0),
        p50_us=p50,
        p90_us=p90,
        p99_us=p99,
        p999_us=p999,
        max_us=top,
        errors=sum(errors.values()),
        error_kinds=errors,
        connect_ms=_merge_figure([s.connect_ms if s else None for s in stats]),
        first_echo_ms=_merge_figure([s.first_echo_ms if s else None for s in stats]),
        cpu_seconds=cpu,
        generator_saturated=window > 0 and cpu / window > _SATURATED * usable,
    )


def _loopback_address(host: str, port: int) -> tuple[socket.AddressFamily, tuple[str, int]]:
    # Only literal loopback addresses (and the name "localhost"): this tool must not be
    # pointed at anybody else's machine.
    literal = "127.0.0.1" if host == "localhost" else host
    try:
        address = ipaddress.ip_address(literal)
    except ValueError:
        raise ValueError(
            f"host must be a loopback address such as 127.0.0.1, not {host!r}"
        ) from None
    if not address.is_loopback:
        raise ValueError(f"host must be a loopback address such as 127.0.0.1, not {host!r}")
    if not 0 < port < 65536:
        raise ValueError(f"port must be in 1..65535, not {port}")
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    return family, (str(address), port)


def _check_counts(connections: int, size: int, pipeline: int, processes: int) -> None:
    for name, value in (("connections", connections), ("size", size), ("pipeline", pipeline)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, not {value}")
    if not 1 <= processes <= connections:
        raise ValueError(f"processes must be in 1..connections ({connections}), not {processes}")


def _run_python(plan: Plan, shares: list[int]) -> list[WorkerStats | None]:
    # One share runs in this process; more are forked workers.
    if len(shares) == 1:
        return [run_worker(plan, shares[0])]
    hard_stop = plan.origin + plan.warmup + plan.duration + plan.connect_timeout
    return _run_forked(plan, shares, hard_stop + _HARD_STOP_SLACK)


def _c_engine(engine: str) -> Path | None:
    # "c" must run the C engine; "auto" runs it when it can be built, else Python.
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    if engine == "python":
        return None
    try:
        return engine_binary()
    except LoadEngineError:
        if engine == "c":
            raise
        return None


def resolve_engine(engine: str = "auto") -> str:
    """Which engine `run_load` with this ``engine`` argument runs: ``"c"`` or ``"python"``.

    Builds the C engine if needed (as the run would). Raises like `run_load`.
    """
    return "python" if _c_engine(engine) is None else "c"


def _raise_fd_limit(needed: int) -> None:
    # 1000 connections need more than the common soft limit of 1024 descriptors.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        limit = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))


def run_load(
    host: str,
    port: int,
    *,
    connections: int,
    size: int,
    duration: float,
    warmup: float = 0.5,
    pipeline: int = 1,
    processes: int = 1,
    connect_timeout: float = 5.0,
    seed: int = 0,
    engine: str = "auto",
) -> LoadResult:
    """Drive an echo server at ``host:port`` and measure it; blocks until done.

    Opens ``connections`` TCP connections at once; each sends a ``size``-byte payload
    (made once from ``seed``), checks that exactly those bytes come back, and repeats,
    with ``pipeline`` messages in flight. After the warm-up (see the module docstring) it
    measures for ``duration`` seconds. ``processes > 1`` runs that many workers, each with
    a share of the connections, and merges their results. Connection failures, wrong or
    missing echoes are counted in the result, never raised. The call ends by itself within
    ``warmup + duration + connect_timeout + 2`` seconds (C engine: ``+ 6``, a bound on its
    processes) even if the server hangs, and closes every socket it opened.

    ``engine`` picks the generator: ``"c"`` the C program (compiled on first use, see
    `_cengine`), ``"python"`` the pure-Python loop, ``"auto"`` (the default) the C one
    when a compiler can build it, else the Python one. The result says which measured.

    Raises ValueError for a host that is not a loopback address, a bad count or an
    unknown engine; LoadEngineError (a RuntimeError, one line) when ``engine="c"`` and
    the C engine cannot be built, or when a C engine process fails.
    """
    family, address = _loopback_address(host, port)
    _check_counts(connections, size, pipeline, processes)
    if duration <= 0 or warmup < 0 or connect_timeout <= 0:
        raise ValueError("duration and connect_timeout must be > 0 and warmup >= 0")
    binary = _c_engine(engine)
    _raise_fd_limit(connections + 64)
    shares = [connections // processes + (i < connections % processes) for i in range(processes)]
    timing = {"warmup": warmup, "duration": duration, "connect_timeout": connect_timeout}
    stats: list[WorkerStats | None]
    if binary is not None:
        stats = list(
            run_c_engine(
                binary, address, shares=shares, size=size, pipeline=pipeline, seed=seed, **timing
            )
        )
    else:
        plan = Plan(
            family=family,
            address=address,
            payload=random.Random(seed).randbytes(size),
            pipeline=pipeline,
            origin=time.perf_counter(),
            **timing,
        )
        stats = _run_python(plan, shares)
    engine_used = "python" if binary is None else "c"
    return _merge(stats, size=size, pipeline=pipeline, engine=engine_used)
