"""triosrv chaos: the target check, the pieces, and whole runs against good and bad servers.

Whole runs use tiny durations. The canary is a subprocess; the servers are triosrv in
this process (open_test_server) or the deliberately weak blocking echo server in
scripts/. The p99 ratio check is off in these tests: no test asserts a speed.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
import trio

import triosrv
from triosrv.chaos import ChaosConfig, TargetError, parse_target, run_chaos
from triosrv.chaos._canary import CanaryLog, percentile
from triosrv.chaos._oversize import PIECE, Message
from triosrv.testing import open_test_server

WEAK_SERVER = Path(__file__).parent.parent / "scripts" / "weak_echo_server.py"
TINY = ChaosConfig(
    duration=0.4,
    quiet=0.2,
    connections=5,
    flood=60,
    churn=60,
    oversize_bytes=3 * 1024 * 1024 + 5,
    stall=2.0,
    recovery=3.0,
    max_p99_ratio=0,
)


# -- the target ---------------------------------------------------------------------


@pytest.mark.parametrize("text", ["127.0.0.1:7", "localhost:7", "127.1.2.3:65535"])
def test_parse_target_accepts_loopback(text: str) -> None:
    target = parse_target(text)
    assert target.port == int(text.rsplit(":", 1)[1])


def test_parse_target_refuses_non_loopback_unless_allowed() -> None:
    with pytest.raises(TargetError, match="not loopback; pass --allow-non-loopback"):
        parse_target("192.0.2.1:80")
    assert str(parse_target("192.0.2.1:80", allow_non_loopback=True)) == "192.0.2.1:80"


@pytest.mark.parametrize("text", ["nope", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:99999", ":80"])
def test_parse_target_bad_forms_are_one_line(text: str) -> None:
    with pytest.raises(TargetError) as info:
        parse_target(text)
    assert "\n" not in str(info.value)


def test_chaos_config_validates_names_and_numbers() -> None:
    with pytest.raises(ValueError, match="scenario: expected one of slowloris"):
        ChaosConfig(scenarios=["slowlorris"])
    with pytest.raises(ValueError, match="duration"):
        ChaosConfig(duration=0)
    with pytest.raises(ValueError, match="expect"):
        ChaosConfig(expect="http")  # type: ignore[arg-type]
    assert ChaosConfig(scenarios=()).scenarios == triosrv.chaos.SCENARIO_NAMES


# -- the pieces -----------------------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 0.99) is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 0.99) == 99.0


def test_oversize_message_slices_agree_across_pieces() -> None:
    message = Message(seed=1, total=3 * PIECE)
    whole = message.piece(0) + message.piece(1) + message.piece(2)
    for start, end in [(0, 10), (PIECE - 3, PIECE + 3), (5, 2 * PIECE + 7), (0, 3 * PIECE)]:
        assert message.slice(start, end) == whole[start:end]
    assert message.piece(1)[8:] == message.piece(2)[8:] and message.piece(1) != message.piece(2)


def test_canary_log_round_trips_and_windows() -> None:
    log = CanaryLog(
        samples=[(1.0, 0.001), (2.0, 0.003), (3.0, 0.5)],
        stalls=[3.0],
        errors=[(2.5, "round trip: reset")],
        probes=[(1.5, 1.6, None), (1.9, 2.1, "timeout"), (2.6, 2.7, "reset")],
    )
    again = CanaryLog.from_dict(json.loads(json.dumps(log.to_dict())))
    assert again == log
    quiet, attack = log.figures(0, 2.0), log.figures(2.0, 4.0)
    assert (quiet.round_trips, quiet.p99, quiet.probes, quiet.probes_failed) == (1, 0.001, 2, 1)
    assert (attack.round_trips, attack.stalls, attack.errors) == (2, 1, ("round trip: reset",))
    # A probe overlapping both windows counts in both.
    assert (attack.probes, attack.probe_errors) == (2, ("reset", "timeout"))


# -- whole runs ------------------------------------------------------------------------


def _target(port: int | None) -> triosrv.chaos.Target:
    return parse_target(f"127.0.0.1:{port}")


async def test_chaos_every_scenario_passes_against_triosrv() -> None:
    async with open_test_server("echo") as running:
        with trio.fail_after(90):
            report = await run_chaos(_target(running.port), TINY)
    assert [r.name for r in report.results] == list(triosrv.chaos.SCENARIO_NAMES)
    assert report.passed, report.format_text()
    by_name = {r.name: r for r in report.results}
    assert by_name["oversize"].server_did.startswith("echoed all 3 MiB exactly")
    assert by_name["garbage"].figures["ok"] == by_name["garbage"].figures["exchanges"]
    assert by_name["flood"].figures["served"] == TINY.flood
    assert all(r.recovered_after is not None for r in report.results)
    assert all(r.attack.round_trips > 0 for r in report.results)


async def test_chaos_sees_the_server_close_idle_and_slow_attackers_at_its_timeouts() -> None:
    timeouts = triosrv.Timeouts(idle=0.5, write=0.5)
    config = attrs.evolve(
        TINY, scenarios=("idle", "slow-reader", "slowloris"), duration=2.5, drip_interval=1.5
    )
    async with open_test_server("echo", timeouts=timeouts) as running:
        report = await run_chaos(_target(running.port), config)
        stats = running.server.statistics()
    assert report.passed, report.format_text()
    for result in report.results:
        assert result.figures["closed_by_server"] == config.connections, result.server_did
        # Closed at the timeout: after it, and well before the attack's end (generous:
        # the machine may be loaded).
        assert 0.4 <= float(str(result.figures["closed_after_median"])) < 2.0
    assert stats.timeouts["idle"] >= 2 * config.connections  # idle + slowloris
    assert stats.timeouts["write"] >= config.connections


@contextlib.asynccontextmanager
async def weak_server() -> AsyncIterator[int]:
    process = await trio.lowlevel.open_process(
        [sys.executable, str(WEAK_SERVER), "--port", "0"], stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    try:
        line = b""
        with trio.fail_after(10):
            while not line.endswith(b"\n"):
                line += await process.stdout.receive_some()
        yield int(line.rsplit(b":", 1)[1])
    finally:
        process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()
            await process.stdout.aclose()


async def test_chaos_reports_a_weak_blocking_server_failing_with_figures() -> None:
    config = attrs.evolve(TINY, scenarios=("slowloris", "half-close", "churn"), stall=0.5)
    async with weak_server() as port:
        with trio.fail_after(60):  # it reports; it does not hang
            report = await run_chaos(_target(port), config)
    assert not report.passed
    assert all(not r.passed for r in report.results)
    by_name = {r.name: r for r in report.results}
    assert any("new connections" in why for why in by_name["slowloris"].failures)
    assert by_name["half-close"].figures["ok"] == 0
    assert any("exchanges failed" in why for why in by_name["churn"].failures)
    assert "FAIL" in report.format_text()


async def test_chaos_against_nothing_fails_every_scenario_at_once() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        with trio.fail_after(30):
            report = await run_chaos(_target(port), attrs.evolve(TINY, scenarios=("idle", "churn")))
    assert [r.failures for r in report.results] == [("canary: could not connect: refused",)] * 2


# -- the command line --------------------------------------------------------------------

CHAOS = [sys.executable, "-m", "triosrv", "chaos"]
TINY_ARGS = ["--duration", "0.3", "--quiet", "0.2", "--connections", "3", "--churn", "30"]


def test_cli_chaos_refuses_a_non_loopback_target_with_exit_2() -> None:
    result = subprocess.run(
        [*CHAOS, "--target", "192.0.2.1:80"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "--allow-non-loopback" in result.stderr and "Traceback" not in result.stderr


async def test_cli_chaos_json_exit_0_against_triosrv() -> None:
    async with open_test_server("echo") as running:
        result = await trio.run_process(
            [
                *CHAOS,
                "--target",
                f"127.0.0.1:{running.port}",
                "--scenario",
                "idle",
                "--scenario",
                "churn",
                *TINY_ARGS,
                "--json",
            ],
            capture_stdout=True,
            check=False,
        )
    doc = json.loads(result.stdout)
    assert result.returncode == 0, doc
    assert doc["passed"] is True
    assert [s["name"] for s in doc["scenarios"]] == ["idle", "churn"]
    assert doc["scenarios"][1]["figures"]["ok"] == 30


async def test_cli_chaos_exit_1_with_text_report_against_a_weak_server() -> None:
    async with weak_server() as port:
        result = await trio.run_process(
            [*CHAOS, "--target", f"127.0.0.1:{port}", "--scenario", "half-close", *TINY_ARGS],
            capture_stdout=True,
            check=False,
        )
    out = result.stdout.decode()
    assert result.returncode == 1
    assert "half-close       FAIL" in out and "0/1 scenarios passed" in out
