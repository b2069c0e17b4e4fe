"""Tools that measure servers: an echo load generator with its own event loop, and the
benchmarks of ``triosrv bench`` (backends, threads vs tasks, CPU-bound work)."""

from __future__ import annotations

from .._server_processes import BenchError
from ._backends import BACKENDS, BackendsPlan
from ._backends_report import bench_backends
from ._cengine import ENGINES as LOAD_ENGINES
from ._cengine import LoadEngineError
from ._cpu import bench_cpu
from ._load import LoadResult, run_load
from ._loadcmd import bench_load
from ._paired import PairedResult, run_paired, swapped
from ._threads_vs_tasks import bench_threads_vs_tasks

__all__ = [
    "BACKENDS",
    "LOAD_ENGINES",
    "BackendsPlan",
    "BenchError",
    "LoadEngineError",
    "LoadResult",
    "PairedResult",
    "bench_backends",
    "bench_cpu",
    "bench_load",
    "bench_threads_vs_tasks",
    "run_load",
    "run_paired",
    "swapped",
]
