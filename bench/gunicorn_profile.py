"""gunicorn settings of `bench/run.py --profile` (GUNICORN_CMD_ARGS="--config ..."): the
repository's gunicorn.conf.py, plus hooks that put each worker's application under the
per-endpoint profiler (bench/profiling.py) and write the profiles when the worker exits."""

from __future__ import annotations

import os
import runpy
from pathlib import Path
from typing import Any

_settings = runpy.run_path(str(Path(__file__).resolve().parent.parent / "gunicorn.conf.py"))
globals().update({k: v for k, v in _settings.items() if not k.startswith("_")})


def post_worker_init(worker: Any) -> None:
    from bench.profiling import ProfilingMiddleware

    worker.wsgi = ProfilingMiddleware(worker.wsgi, os.environ["BENCH_PROFILE_DIR"])


def worker_exit(server: Any, worker: Any) -> None:
    from bench.profiling import ProfilingMiddleware

    if isinstance(worker.wsgi, ProfilingMiddleware):
        worker.wsgi.dump()
