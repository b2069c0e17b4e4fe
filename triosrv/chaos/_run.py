"""Running scenarios: quiet baseline, attack beside the canary, recovery, verdict.

For each scenario, in order:

1. the canary connects and runs alone for ``quiet`` seconds: the baseline;
2. the attack runs beside it (bounded by ``duration + ATTACK_SLACK``, or by
   ``oversize_time`` for oversize) and closes everything it opened;
3. the canary stops, and new connections are tried until one is served (at most
   ``recovery`` seconds): the server must come back once the attack is over;
4. the verdict: the canary served without stalls or errors, newcomers served during
   the attack (except in ``flood``, whose point is to use up the server's slots),
   p99 within ``max_p99_ratio`` of the quiet p99, recovered, and the attack's own
   checks (``Outcome.problems``).
"""

from __future__ import annotations

import resource
import time
from collections.abc import Awaitable, Callable

import trio

from ._attack import AttackContext, Outcome
from ._canary import ROUND_TRIP_INTERVAL, Canary, CanaryFigures, CanaryLog
from ._canary_process import CanaryError, open_canary
from ._config import ChaosConfig, Target
from ._exchanges import churn, garbage, half_close
from ._held import flood, idle, slow_reader, slowloris
from ._oversize import oversize
from ._report import ChaosReport, ScenarioResult
from ._resets import reset_mid_read, reset_mid_write

# The shortest attack window the canary is judged over: 20 of its round-trip intervals.
MIN_ATTACK_WINDOW = 20 * ROUND_TRIP_INTERVAL

ATTACKS: dict[str, Callable[[AttackContext], Awaitable[Outcome]]] = {
    "slowloris": slowloris,
    "slow-reader": slow_reader,
    "flood": flood,
    "reset-mid-read": reset_mid_read,
    "reset-mid-write": reset_mid_write,
    "half-close": half_close,
    "garbage": garbage,
    "oversize": oversize,
    "idle": idle,
    "churn": churn,
}
# Exchanges started just before the deadline may run this much longer.
ATTACK_SLACK = 5.0
# Below this p99 (seconds) the canary is fast enough whatever the ratio: on loopback a
# quiet p99 is a fraction of a millisecond, and a ratio of such tiny figures is noise.
P99_FLOOR = 0.02
# Seconds between the canary's probes while the server recovers from an attack: the
# resolution of a scenario's "recovered in" figure (the operator's --recovery is seconds).
CANARY_PROBE_INTERVAL = 0.05
# Scenarios whose point is to take every slot the server has: newcomers may wait.
SLOTS_TAKEN = frozenset({"flood"})


async def run_chaos(
    target: Target,
    config: ChaosConfig,
    *,
    on_result: Callable[[ScenarioResult], object] | None = None,
) -> ChaosReport:
    """Run ``config.scenarios`` one after another against ``target``; return the report.

    ``on_result`` is called with each scenario's result as soon as it is known (to
    show progress). Every loop is bounded in count and time; every socket opened is
    closed before the next scenario. Cancelling it stops the run (and closes everything,
    the canary process included).
    """
    results = []
    for name in config.scenarios:
        results.append(await run_scenario(name, target, config))
        if on_result is not None:
            on_result(results[-1])
    return ChaosReport(target=str(target), config=config, results=tuple(results))


async def run_scenario(name: str, target: Target, config: ChaosConfig) -> ScenarioResult:
    """Run one scenario (quiet, attack, recovery) and judge it."""
    began = time.monotonic()
    outcome = Outcome()
    try:
        async with open_canary(target, expect=config.expect, stall=config.stall) as canary:
            quiet_start = time.monotonic()
            await trio.sleep(config.quiet)
            attack_start = time.monotonic()
            outcome = await _attack(name, target, config)
            # An attack over in a few ms (a fast server takes a whole oversize message
            # in 10 ms) would leave the canary no time to show anything: watch it for
            # at least MIN_ATTACK_WINDOW before judging "no round trip completed".
            left = MIN_ATTACK_WINDOW - (time.monotonic() - attack_start)
            if left > 0:
                await trio.sleep(left)
            attack_end = time.monotonic()
    except CanaryError as exc:
        return _unreachable(name, began, str(exc))
    quiet = canary.log.figures(quiet_start, attack_start)
    attack = canary.log.figures(attack_start, attack_end)
    prober = Canary(target, expect=config.expect, stall=config.stall)
    recovered = await _recovery(prober, config.recovery)
    ratio = None
    if quiet.p99 and attack.p99 is not None:
        ratio = round(attack.p99 / quiet.p99, 2)
    failures = _judge(name, config, quiet, attack, ratio, recovered) + outcome.problems
    return ScenarioResult(
        name=name,
        failures=tuple(failures),
        server_did=outcome.server_did,
        quiet=quiet,
        attack=attack,
        p99_ratio=ratio,
        recovered_after=recovered,
        figures=outcome.figures,
        seconds=round(time.monotonic() - began, 2),
    )


async def _attack(name: str, target: Target, config: ChaosConfig) -> Outcome:
    ctx = AttackContext(name=name, target=target, config=config, start=trio.current_time())
    bound = (config.oversize_time if name == "oversize" else config.duration) + ATTACK_SLACK
    outcome = Outcome()
    with trio.move_on_after(bound) as scope:
        outcome = await ATTACKS[name](ctx)
    if scope.cancelled_caught:
        outcome.problems.append(f"the attack was cut after {bound:g} s")
    return outcome


def _judge(
    name: str,
    config: ChaosConfig,
    quiet: CanaryFigures,
    attack: CanaryFigures,
    ratio: float | None,
    recovered: float | None,
) -> list[str]:
    failures = []
    if quiet.probes_failed:
        failures.append(
            f"before the attack {quiet.probes_failed}/{quiet.probes} new connections were "
            f"not served ({', '.join(quiet.probe_errors)}) while the canary was connected"
        )
    if attack.round_trips == 0:
        failures.append("canary: no round trip completed during the attack")
    if attack.stalls:
        failures.append(f"canary: {attack.stalls} round trip(s) took over {config.stall:g} s")
    if attack.errors:
        failures.append(f"canary: {', '.join(sorted(set(attack.errors)))}")
    if attack.probes_failed and name not in SLOTS_TAKEN:
        failures.append(
            f"new connections: {attack.probes_failed}/{attack.probes} not served during "
            f"the attack ({', '.join(attack.probe_errors)})"
        )
    limit = config.max_p99_ratio
    if limit and ratio is not None and ratio > limit and (attack.p99 or 0) > P99_FLOOR:
        failures.append(
            f"canary p99 {attack.p99 * 1000 if attack.p99 else 0:.2f} ms under attack is "
            f"{ratio:.1f}x its quiet p99 (limit {limit:g}x)"
        )
    if recovered is None:
        failures.append(f"no new connection served within {config.recovery:g} s after the attack")
    return failures


async def _recovery(canary: Canary, within: float) -> float | None:
    # Seconds until a new connection is served, or None past ``within``.
    start = trio.current_time()
    with trio.move_on_after(within):
        for seq in range(int(within / CANARY_PROBE_INTERVAL) + 1):
            if await canary.probe_once(seq) is None:
                return round(trio.current_time() - start, 3)
            await trio.sleep(CANARY_PROBE_INTERVAL)
    return None


def _unreachable(name: str, began: float, why: str) -> ScenarioResult:
    figures = CanaryLog().figures(began, began)
    return ScenarioResult(
        name=name,
        failures=(f"canary: {why}",),
        server_did="not reachable",
        quiet=figures,
        attack=figures,
        p99_ratio=None,
        recovered_after=None,
        figures={},
        seconds=round(time.monotonic() - began, 2),
    )


def raise_fd_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (for flood); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard
