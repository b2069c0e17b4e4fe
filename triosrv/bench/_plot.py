"""PNG plots of the bench reports (matplotlib, the optional extra ``plot``)."""

from __future__ import annotations

import importlib.util
from typing import Any

__all__ = ["check_plotting", "plot_backends", "plot_threads_vs_tasks"]


def check_plotting() -> None:
    """Raise RuntimeError (one line) when matplotlib is not installed."""
    if importlib.util.find_spec("matplotlib") is None:
        raise RuntimeError("--plot needs matplotlib: pip install 'triosrv[plot]'")


def _suptitle(figure: Any, command: str, facts: dict[str, Any]) -> None:
    figure.suptitle(
        f"{command}: {facts['cpu_count']} CPUs, {facts['kernel']}, Python {facts['python']}"
    )


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
    _suptitle(figure, "triosrv bench backends", doc["machine"])
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_threads_vs_tasks(doc: dict[str, Any], path: str) -> None:
    """Write a PNG: memory per idle connection and time to open N, threads against tasks.

    ``doc`` is what ``bench_threads_vs_tasks`` returns; a count that failed is left out.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display: write files only
    import matplotlib.pyplot as plt

    figure, (memory_axes, open_axes) = plt.subplots(1, 2, figsize=(12, 4.5))
    for model in doc["models"]:
        label = f"{model['kind']} ({model['backend']})"
        memory = [
            (r["connections"], r["rss_per_connection"] / 1024)
            for r in model["runs"]
            if r["rss_per_connection"] is not None
        ]
        opened = [(r["connections"], r["open_ms"]) for r in model["runs"] if r["open_ms"]]
        for axes, points in ((memory_axes, memory), (open_axes, opened)):
            if points:
                axes.plot(*zip(*points, strict=True), marker="o", label=label)
    memory_axes.set(
        xscale="log",
        xlabel="idle connections N",
        ylabel="server memory per connection, KiB",
        title="memory per idle connection (RSS growth / N)",
    )
    memory_axes.set_ylim(bottom=0)
    open_axes.set(
        xscale="log",
        yscale="log",
        xlabel="connections N",
        ylabel="ms until every one had its echo",
        title="time to open N connections",
    )
    for axes in (memory_axes, open_axes):
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize="small")
    _suptitle(figure, "triosrv bench threads-vs-tasks", doc["machine"])
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
