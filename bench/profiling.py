"""Per-endpoint aggregated cProfile profiles of the API, for `bench/run.py --profile`.

bench/gunicorn_profile.py wraps each gunicorn worker's application in ProfilingMiddleware:
every request is profiled into one cProfile.Profile per endpoint ("GET /api/v1/deals/{id}"),
and the directory BENCH_PROFILE_DIR receives, every 60 s and when the worker exits:

- `<endpoint>.prof` (pstats format: `python -m pstats`, snakeviz, ...) and `all.prof`;
- `summary.txt`: server-side time per endpoint, then the top functions overall and per
  endpoint by cumulative and by own time.

cProfile follows one thread: run gunicorn with one sync worker (one thread)."""

from __future__ import annotations

import atexit
import cProfile
import io
import os
import pstats
import re
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

_ID = re.compile(r"/\d+(?=/|$)")
DUMP_EVERY_SECONDS = 60.0
TOP = 25


def endpoint_key(environ: dict[str, Any]) -> str:
    return f"{environ.get('REQUEST_METHOD', '?')} {_ID.sub('/{id}', environ.get('PATH_INFO', ''))}"


def _slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", key).strip("_") or "root"


class ProfilingMiddleware:
    def __init__(self, app: Callable[..., Iterable[bytes]], out_dir: str | Path) -> None:
        self.app = app
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.profiles: dict[str, cProfile.Profile] = {}
        self.wall: dict[str, list[float]] = {}  # key -> [count, total seconds, max seconds]
        self.lock = threading.Lock()
        self.last_dump = time.monotonic()
        atexit.register(self.dump)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        key = endpoint_key(environ)
        with self.lock:
            profile = self.profiles.setdefault(key, cProfile.Profile())
        started = time.perf_counter()
        profile.enable()
        try:
            result = self.app(environ, start_response)
            try:
                body = list(result)  # the response is produced inside the profile
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        finally:
            profile.disable()
            spent = time.perf_counter() - started
            with self.lock:
                entry = self.wall.setdefault(key, [0, 0.0, 0.0])
                entry[0] += 1
                entry[1] += spent
                entry[2] = max(entry[2], spent)
        if time.monotonic() - self.last_dump > DUMP_EVERY_SECONDS:
            self.dump()
        return body

    def dump(self) -> None:
        with self.lock:
            self.last_dump = time.monotonic()
            profiles = dict(self.profiles)
            wall = {k: list(v) for k, v in self.wall.items()}
        if not profiles:
            return
        out = io.StringIO()
        out.write(f"pid {os.getpid()}; server-side wall time per endpoint (profiler on)\n")
        out.write(f"{'endpoint':<48}{'count':>8}{'total s':>10}{'mean ms':>10}{'max ms':>10}\n")
        ranked = sorted(wall.items(), key=lambda kv: -kv[1][1])
        for key, (count, total, worst) in ranked:
            out.write(
                f"{key:<48}{int(count):>8}{total:>10.2f}{total / count * 1000:>10.1f}"
                f"{worst * 1000:>10.1f}\n"
            )
        combined: pstats.Stats | None = None
        for key, profile in profiles.items():
            try:
                profile.dump_stats(str(self.out / f"{_slug(key)}.prof"))
                stats = pstats.Stats(profile)
            except (TypeError, ValueError):  # a profile with no data yet
                continue
            if combined is None:
                combined = pstats.Stats(profile)
            else:
                combined.add(stats)
        if combined is not None:
            combined.dump_stats(str(self.out / "all.prof"))
            for sort in ("cumulative", "tottime"):
                out.write(f"\n=== all endpoints, top {TOP} by {sort} ===\n")
                combined.stream = out  # type: ignore[attr-defined]
                combined.sort_stats(sort).print_stats(TOP)
        for key, _ in ranked:
            if key not in profiles:
                continue
            try:
                stats = pstats.Stats(profiles[key], stream=out)
            except (TypeError, ValueError):
                continue
            out.write(f"\n=== {key}: top {TOP} by cumulative ===\n")
            stats.strip_dirs().sort_stats("cumulative").print_stats(TOP)
        (self.out / "summary.txt").write_text(out.getvalue())
