"""PNG plots of the bench reports (matplotlib, the optional extra ``plot``)."""

from __future__ import annotations

import importlib.util
from typing import Any

__all__ = ["check_plotting", "plot_backends"]


def check_plotting() -> None:
    """Raise RuntimeError (one line) when matplotlib is not installed."""
    if importlib.util.find_spec("matplotlib") is None:
        raise RuntimeError("--plot needs matplotlib: pip install 'triosrv[plot]'")


def plot_backends(doc: dict[str, Any], path: str) -> None:
    """Write a PNG: wait cost against idle connections, throughput against connections."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write files only
    import matplotlib.pyplot as plt

    figure, (wait_axes, echo_axes) = plt.subplots(1, 2, figsize=(12, 4.5))
    for row in doc["backends"]:
        waits = [(int(n), v) for n, v in row["wait_us"].items() if v is not None]
        if waits:
            wait_axes.plot(*zip(*waits, strict=True), marker="o", label=row["backend"])
        echo = [(int(c), e["rtps"]) for c, e in row["echo"].items()]
        if echo:
            echo_axes.plot(*zip(*echo, strict=True), marker="o", label=row["backend"])
    wait_axes.set(
        xscale="log",
        yscale="log",
        xlabel="idle connections N",
        ylabel="echo round trip, us (median)",
        title="cost of one readiness wait",
    )
    echo_axes.set(
        xscale="log",
        xlabel="connections C",
        ylabel="round trips per second",
        title="echo throughput, 64 B",
    )
    for axes in (wait_axes, echo_axes):
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize="small")
    facts = doc["machine"]
    figure.suptitle(
        f"triosrv bench backends: {facts['cpu_count']} CPUs, {facts['kernel']}, "
        f"Python {facts['python']}"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
