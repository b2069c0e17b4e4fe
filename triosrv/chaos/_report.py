"""The chaos report: one verdict per scenario with its figures, as text or JSON."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs

from ._canary import CanaryFigures
from ._config import ChaosConfig


@attrs.frozen(kw_only=True)
class ScenarioResult:
    """One scenario's verdict.

    ``failures`` says why it failed (empty when it passed); ``server_did`` what the
    server did to the attack's connections; ``quiet`` and ``attack`` are the canary's
    figures before and during the attack; ``p99_ratio`` the second p99 over the first;
    ``recovered_after`` the seconds until a new connection was served once the attack
    ended (None: not within ``ChaosConfig.recovery``); ``figures`` the attack's own.
    """

    name: str
    failures: tuple[str, ...]
    server_did: str
    quiet: CanaryFigures
    attack: CanaryFigures
    p99_ratio: float | None
    recovered_after: float | None
    figures: Mapping[str, object]
    seconds: float

    @property
    def passed(self) -> bool:
        """True when nothing failed."""
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (latencies in seconds)."""
        doc = attrs.asdict(self, recurse=True)
        doc["passed"] = self.passed
        return doc


@attrs.frozen(kw_only=True)
class ChaosReport:
    """Every scenario's result against one target."""

    target: str
    config: ChaosConfig
    results: tuple[ScenarioResult, ...]

    @property
    def passed(self) -> bool:
        """True when every scenario passed."""
        return all(result.passed for result in self.results)

    def to_json(self) -> str:
        """The whole report as one JSON document."""
        return json.dumps(
            {
                "target": self.target,
                "passed": self.passed,
                "config": attrs.asdict(self.config),
                "scenarios": [result.to_dict() for result in self.results],
            },
            indent=2,
        )

    def format_text(self) -> str:
        """The report as text for a terminal: a block per scenario, then a summary."""
        parts = [format_header(self.target, self.config)]
        parts += [format_result(result) for result in self.results]
        parts.append(format_summary(self.results))
        return "\n".join(parts)


def format_header(target: str, config: ChaosConfig) -> str:
    """The report's first line, and a blank one."""
    return (
        f"triosrv chaos against {target}: expect {config.expect}, {config.duration:g} s per "
        f"attack, {config.quiet:g} s quiet before each, seed {config.seed}\n"
    )


def format_summary(results: tuple[ScenarioResult, ...] | list[ScenarioResult]) -> str:
    """The report's last line: how many scenarios passed."""
    passed = sum(result.passed for result in results)
    return f"{passed}/{len(results)} scenarios passed"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f} ms"


def format_result(result: ScenarioResult) -> str:
    """One scenario as a block of text lines (ends with a blank line)."""
    quiet, attack = result.quiet, result.attack
    ratio = "" if result.p99_ratio is None else f" ({result.p99_ratio:.1f}x)"
    recovered = (
        "not recovered" if result.recovered_after is None else f"{result.recovered_after:.2f} s"
    )
    pad = " " * 17
    lines = [
        f"{result.name:<16} {'PASS' if result.passed else 'FAIL'}  "
        f"canary p99 {_ms(quiet.p99)} quiet, {_ms(attack.p99)} under attack{ratio}; "
        f"{attack.round_trips} round trips, {attack.stalls} stalls; new connections "
        f"{attack.probes - attack.probes_failed}/{attack.probes} served; recovered {recovered}",
        f"{pad}server: {result.server_did}",
    ]
    figures = " ".join(f"{key}={value}" for key, value in result.figures.items())
    if figures:
        lines.append(f"{pad}figures: {figures}")
    lines += [f"{pad}failed: {why}" for why in result.failures]
    lines.append("")
    return "\n".join(lines)
