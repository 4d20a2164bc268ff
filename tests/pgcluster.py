"""A private PostgreSQL cluster that a test may stop, restart and freeze: never the machine's
shared server (other test runs use that one).

The binaries come from PG_BIN, else the newest /usr/lib/postgresql/*/bin, else the ones the
embedded `pgserver` package ships. The cluster lives in a fresh directory under the system's
temporary directory, listens on a free loopback port with trust authentication, and runs as
an unprivileged user when the tests run as root (PostgreSQL refuses to run as root): the
`postgres` user of the distribution's packages, else `pgserver`'s own. `freeze()` stops the
postmaster and every backend (SIGSTOP: connections are accepted by the kernel and then
nothing answers, as on a hung host) and `thaw()` lets them go on."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from alembic import command
from alembic.config import Config

from crm_domain.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent


def binaries() -> Path | None:
    """Where initdb and postgres are, or None."""
    candidates = []
    if os.environ.get("PG_BIN"):
        candidates.append(Path(os.environ["PG_BIN"]))
    candidates += sorted(
        (Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    for path in candidates:
        if (path / "initdb").exists() and (path / "postgres").exists():
            return path
    try:
        from pgserver._commands import POSTGRES_BIN_PATH
    except ImportError:
        return None
    return Path(POSTGRES_BIN_PATH) if (Path(POSTGRES_BIN_PATH) / "postgres").exists() else None


def _run_as() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "pgserver"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and no 'postgres' user to run PostgreSQL as")


class PrivatePostgres:
    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.user = _run_as()
        self.dir = Path(tempfile.mkdtemp(prefix="crm-private-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.frozen = False
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        subprocess.run(
            [
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            user=self.user,
        )

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy URL (psycopg 3) over TCP loopback."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def libpq_url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> PrivatePostgres:
        log = (self.dir / "postgres.log").open("ab")
        self.proc = subprocess.Popen(
            [
                str(self.bin / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={self.dir}",
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            user=self.user,
            start_new_session=True,  # the test's Ctrl-C is not the server's
        )
        log.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(self.libpq_url(), connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return self
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL did not start: {self.log_tail()}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        """A fast shutdown (SIGINT): clients get "terminating connection" and a closed socket,
        as in a maintenance restart."""
        if self.proc is None:
            return
        self.thaw()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def _children(self) -> list[int]:
        assert self.proc is not None
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == self.proc.pid:
                found.append(int(entry))
        return found

    def freeze(self) -> None:
        """SIGSTOP the postmaster, then every child (each backend is a session of its own,
        so one signal to the process group does not reach them); a stopped postmaster
        starts no new one meanwhile."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.frozen = True
        for pid in self._children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if self.frozen and self.proc is not None:
            for pid in self._children():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            os.kill(self.proc.pid, signal.SIGCONT)
        self.frozen = False

    def create_database(self, name: str) -> str:
        """A new database; its SQLAlchemy URL."""
        with psycopg.connect(self.libpq_url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log_tail(self, chars: int = 4000) -> str:
        path = self.dir / "postgres.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def private_cluster(database: str = "crm") -> Iterator[tuple[PrivatePostgres, str]]:
    """For a fixture: a started private cluster with one migrated database (its URL); the
    cluster is removed after. Skips when no PostgreSQL binaries are installed."""
    bin_dir = binaries()
    if bin_dir is None:
        pytest.skip("no PostgreSQL binaries (initdb, postgres) for a private cluster")
    cluster = PrivatePostgres(bin_dir)
    try:
        url = cluster.start().create_database(database)
        cfg = Config(str(ROOT / "alembic.ini"))
        cfg.attributes["url"] = url
        cfg.attributes["configure_logger"] = False
        command.upgrade(cfg, "head")
        yield cluster, url
    finally:
        cluster.destroy()


def back_up(cluster: PrivatePostgres) -> None:
    """After a test: the cluster running and not frozen, whatever the test left."""
    cluster.thaw()
    if cluster.proc is None or cluster.proc.poll() is not None:
        cluster.proc = None
        cluster.start()
