"""Two echo servers compared a fraction of a second apart: `run_paired`.

Why: on a shared machine the rate one server gets swings by 10-30% from one 100 ms to
the next (other tenants on the host, the CPU's clock); two runs of the *same* server a
few seconds apart differ by as much. A ratio of two such runs needs dozens of rounds
before a difference of a few percent shows. Measured this way instead, the same server
against itself gives within 1-3% of 1.0 from one 10 s run on the machine this was
written on.

How: the C engine (``_cload.c``, paired mode) keeps ``connections`` connections open to
each server and cuts the measured time into windows of ``window`` seconds that alternate
between them, A B A B ... Only the server whose window it is gets load; at a window's
end its connections stop sending new messages once the ones in flight come back, so no
window starts with the other server still busy. Each B window is compared with the mean
of the A windows on either side of it, which cancels any drift slower than a window, and
the figure is the median of those ratios, with its quartiles for the spread.

Which server is A matters a little: the same server against itself gave B/A between
0.987 and 1.026 over 11 runs of 10 s, median 1.006. `swapped` combines a run with the
two the other way round, so that whatever favours one side cancels.

Both servers should run on the same CPU (the caller pins them): then each gets the same
CPU, one after the other, and the generator the other CPU. The C engine is required (a
compiler on PATH); the Python engine has no paired mode.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping

import attrs

from ._cengine import engine_binary, run_c_paired
from ._load import _check_counts, _loopback_address, _raise_fd_limit

__all__ = ["PairedResult", "run_paired", "swapped"]


@attrs.frozen(kw_only=True)
class PairedResult:
    """The outcome of one `run_paired` call.

    ``windows`` lists every measured window in order as ``(server, round trips,
    seconds)``, server 0 being A (``port_a``) and 1 being B. ``errors`` counts failed
    connections of both servers, by kind in ``error_kinds``.
    """

    connections: int
    size: int
    window: float
    windows: tuple[tuple[int, int, float], ...]
    errors: int
    error_kinds: Mapping[str, int]
    cpu_seconds: float

    def rates(self, server: int) -> list[float]:
        """Round trips per second of each window of ``server`` (0: A, 1: B), in order."""
        return [n / t for s, n, t in self.windows if s == server and t > 0]

    @property
    def ratios(self) -> list[float]:
        """B/A for each B window: its rate over the mean rate of the A windows beside it."""
        out = []
        for i, (server, n, t) in enumerate(self.windows):
            if server != 1 or t <= 0:
                continue
            beside = [
                self.windows[j][1] / self.windows[j][2]
                for j in (i - 1, i + 1)
                if 0 <= j < len(self.windows) and self.windows[j][0] == 0 and self.windows[j][2] > 0
            ]
            if beside and sum(beside) > 0:
                out.append((n / t) / (sum(beside) / len(beside)))
        return out

    @property
    def ratio(self) -> float | None:
        """The median of `ratios`: how fast B is against A (None without a pair)."""
        ratios = self.ratios
        return statistics.median(ratios) if ratios else None

    @property
    def quartiles(self) -> tuple[float, float] | None:
        """The first and third quartiles of `ratios` (None with fewer than two)."""
        return _quartiles(self.ratios)

    def to_dict(self) -> dict[str, object]:
        """Plain values for JSON, the derived figures included."""
        return {
            "connections": self.connections,
            "size": self.size,
            "window": self.window,
            "ratio": self.ratio,
            "quartiles": self.quartiles,
            "rtps_a": _median(self.rates(0)),
            "rtps_b": _median(self.rates(1)),
            "windows": [list(w) for w in self.windows],
            "errors": self.errors,
            "error_kinds": dict(self.error_kinds),
            "cpu_seconds": self.cpu_seconds,
        }


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _quartiles(values: list[float]) -> tuple[float, float] | None:
    if len(values) < 2:
        return None
    q1, _, q3 = statistics.quantiles(values, n=4)
    return q1, q3


def swapped(forward: PairedResult, backward: PairedResult) -> dict[str, object]:
    """B/A from ``forward`` (A, B) and ``backward`` (the same two as B, A) together.

    The figures of both runs' ratios, ``backward``'s inverted: ``ratio`` (the median),
    ``quartiles`` (None with fewer than two) and ``windows_compared`` (how many B windows
    had an A window beside them, both runs together).
    """
    ratios = forward.ratios + [1 / r for r in backward.ratios if r > 0]
    return {
        "ratio": _median(ratios),
        "quartiles": _quartiles(ratios),
        "windows_compared": len(ratios),
    }


def run_paired(
    host: str,
    port_a: int,
    port_b: int,
    *,
    connections: int,
    size: int = 64,
    duration: float = 10.0,
    window: float = 0.2,
    warmup: float = 0.5,
    connect_timeout: float = 5.0,
    seed: int = 0,
) -> PairedResult:
    """Compare the echo servers at ``host:port_a`` (A) and ``host:port_b`` (B).

    Opens ``connections`` connections to each (one message of ``size`` bytes in flight
    on each), warms both up together, then measures ``duration`` seconds in windows of
    ``window`` seconds that alternate between A and B (see the module docstring). Ends
    by itself within ``warmup + 2 * (connect_timeout + duration) + 6`` seconds.

    Raises ValueError for a host that is not loopback or a bad count or time, and
    LoadEngineError when the C engine cannot be built or fails.
    """
    _family, address = _loopback_address(host, port_a)
    _loopback_address(host, port_b)
    _check_counts(connections, size, 1, 1)
    if duration <= 0 or window <= 0 or warmup < 0 or connect_timeout <= 0:
        raise ValueError("duration, window and connect_timeout must be > 0 and warmup >= 0")
    _raise_fd_limit(2 * connections + 64)
    stats, windows = run_c_paired(
        engine_binary(),
        address,
        port_b,
        connections=connections,
        size=size,
        warmup=warmup,
        duration=duration,
        window=window,
        connect_timeout=connect_timeout,
        seed=seed,
    )
    return PairedResult(
        connections=connections,
        size=size,
        window=window,
        windows=tuple(windows),
        errors=sum(stats.errors.values()),
        error_kinds=dict(stats.errors),
        cpu_seconds=stats.cpu_seconds,
    )
