"""gunicorn settings of the benchmark, passed with --config so that the repository's
./gunicorn.conf.py (read by default from the working directory) does not apply: bench/run.py
sets bind, workers, threads, worker class and timeouts on the command line."""

from __future__ import annotations

from typing import Any

accesslog = None  # the access log stays off
errorlog = "-"
loglevel = "warning"
max_requests = 0  # no worker recycling in the middle of a measurement


def worker_exit(server: Any, worker: Any) -> None:
    """With --profile (BENCH_PROFILE_DIR), write the profiles when the worker exits."""
    import sys

    profiling = sys.modules.get("bench.profiling")
    if profiling is not None and isinstance(profiling.app, profiling.ProfilingMiddleware):
        profiling.app.dump()
