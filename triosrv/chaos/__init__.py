"""Scripted chaos against any TCP server: what ``triosrv chaos`` runs.

Each scenario attacks the target (slow clients, floods, resets, garbage, a huge
message, churn) while a well-behaved canary client does echo round trips, and reports
whether the server kept serving, what it did to the attackers, and the canary's
latency during the attack against its quiet baseline. Only plain client sockets are
used, never triosrv's server modules, so the target may be any server::

    target = triosrv.chaos.parse_target("127.0.0.1:8888")
    report = trio.run(triosrv.chaos.run_chaos, target, triosrv.chaos.ChaosConfig())
    print(report.format_text())
"""

from __future__ import annotations

from ._canary import CanaryFigures
from ._config import SCENARIO_NAMES, ChaosConfig, Target, TargetError, parse_target
from ._report import ChaosReport, ScenarioResult, format_header, format_result, format_summary
from ._run import P99_FLOOR, raise_fd_limit, run_chaos, run_scenario

__all__ = [
    "P99_FLOOR",
    "SCENARIO_NAMES",
    "CanaryFigures",
    "ChaosConfig",
    "ChaosReport",
    "ScenarioResult",
    "Target",
    "TargetError",
    "format_header",
    "format_result",
    "format_summary",
    "parse_target",
    "raise_fd_limit",
    "run_chaos",
    "run_scenario",
]
