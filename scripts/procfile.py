"""The one launcher: runs the Procfile's process types, supervised like a process manager.

`make run` (scripts/devstack.py), the benchmark (bench/) and the worker tests (tests/stack.py)
all start their processes from the Procfile through this module, so every process runs with
the same command line in development, tests, benchmarks and production (a PaaS reads the same
Procfile; docker-compose.yml repeats its commands).

A `Process` runs one Procfile entry through `sh -c 'exec …'` (so `${VAR:-default}` expands as
a PaaS would expand it) in a process group of its own, and restarts it when it exits on its
own, giving up after `max_restarts` exits within a minute."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def read_procfile(path: Path = ROOT / "Procfile") -> dict[str, str]:
    """{process type: command line} in file order."""
    entries: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, command = line.partition(":")
            entries[name.strip()] = command.strip()
    return entries


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (someone else's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_env(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The current environment with this interpreter's bin/ first on PATH (the venv's
    gunicorn, celery, alembic) plus `overrides`."""
    env = {**os.environ, **(overrides or {})}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


class Process:
    def __init__(
        self,
        name: str,
        env: Mapping[str, str],
        *,
        extra_args: Sequence[str] = (),
        command: str | None = None,
        log_path: Path | None = None,
        max_restarts: int = 5,
    ) -> None:
        line = command if command is not None else read_procfile()[name]
        if extra_args:
            line = f"{line} {shlex.join(extra_args)}"
        self.name = name
        self.argv = ["sh", "-c", f"exec {line}"]
        self.env = dict(env)
        self.log_path = log_path
        self.max_restarts = max_restarts
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.gave_up = False
        self._exits: list[float] = []
        self._wanted = False
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None

    def _spawn(self) -> None:
        out: IO[bytes] | None = self.log_path.open("ab") if self.log_path else None
        self.proc = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
        )
        if out:
            out.close()  # the child has its own copy

    def start(self) -> Process:
        with self._lock:
            self._wanted = True
            self._spawn()
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name=self.name, daemon=True)
            self._watcher.start()
        return self

    def _watch(self) -> None:
        while True:
            time.sleep(0.5)
            with self._lock:
                if not self._wanted or self.proc is None or self.proc.poll() is None:
                    continue
                now = time.monotonic()
                self._exits = [t for t in self._exits if now - t < 60] + [now]
                if len(self._exits) > self.max_restarts:
                    self._wanted, self.gave_up = False, True
                    continue
                self.restarts += 1
                self._spawn()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def terminate(self) -> None:
        """SIGTERM without waiting; not restarted."""
        with self._lock:
            self._wanted = False
            self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the whole process group (no warm shutdown, no acks); not restarted."""
        with self._lock:
            self._wanted = False
            self._signal(signal.SIGKILL)
            if self.proc is not None:
                self.proc.wait(10)

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM (a warm shutdown), then SIGKILL after `timeout` seconds."""
        with self._lock:
            self._wanted = False
            self._signal(signal.SIGTERM)
            if self.proc is None:
                return
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None:
            return ""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def stop_all(processes: Sequence[Process], timeout: float = 15) -> None:
    """TERM every process at once, then wait for each (what a process manager does)."""
    for p in processes:
        p.terminate()
    for p in processes:
        p.stop(timeout)
