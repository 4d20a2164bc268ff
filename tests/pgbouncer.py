"""A PgBouncer in transaction-pooling mode in front of the test PostgreSQL (TEST_PGBOUNCER=1).

Started by the test session as a subprocess with a generated configuration: every database
name is passed through to the same server (`* =`), so the test database and the scratch
databases the tests create are all reached through it. Authentication is `trust` with a
generated userlist (PgBouncer requires the user to be listed even then)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from sqlalchemy.engine import URL, make_url

from crm_domain.embedded import free_port

POOL_SIZE = 20  # server connections per database and user (PgBouncer's default)


def pgbouncer_binary() -> str:
    found = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None
    )
    if not found:
        raise RuntimeError("TEST_PGBOUNCER=1 needs pgbouncer (apt-get install pgbouncer)")
    return found


def version() -> str:
    out = subprocess.run([pgbouncer_binary(), "--version"], capture_output=True, text=True)
    return out.stdout.split("\n", 1)[0].strip()


class PgBouncer:
    def __init__(self, server_url: str) -> None:
        self.server = make_url(server_url)
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="crm-pgbouncer-"))
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, database: str) -> URL:
        """`database` on the server, reached through PgBouncer."""
        return self.server.set(host="127.0.0.1", port=self.port, database=database)

    def _write_config(self) -> Path:
        user = self.server.username or "postgres"
        (self.workdir / "userlist.txt").write_text(f'"{user}" ""\n')
        config = self.workdir / "pgbouncer.ini"
        config.write_text(
            "\n".join(
                [
                    "[databases]",
                    f"* = host={self.server.host or '127.0.0.1'} port={self.server.port or 5432}",
                    "[pgbouncer]",
                    "listen_addr = 127.0.0.1",
                    f"listen_port = {self.port}",
                    "unix_socket_dir =",
                    "auth_type = trust",
                    f"auth_file = {self.workdir / 'userlist.txt'}",
                    "pool_mode = transaction",
                    "max_client_conn = 2000",
                    f"default_pool_size = {POOL_SIZE}",
                    f"admin_users = {user}",
                    "log_connections = 0",
                    "log_disconnections = 0",
                    "",
                ]
            )
        )
        # PgBouncer will not run as root: it drops to `nobody`, which must read the files.
        self.workdir.chmod(0o755)
        for path in self.workdir.iterdir():
            path.chmod(0o644)
        return config

    def start(self) -> PgBouncer:
        config = self._write_config()
        argv = [pgbouncer_binary(), str(config)]
        if os.geteuid() == 0:
            argv[1:1] = ["-u", "nobody"]
        log = (self.workdir / "pgbouncer.log").open("ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        probe = self.url("postgres").set(drivername="postgresql")
        deadline = time.monotonic() + 15
        while True:
            try:
                with psycopg.connect(probe.render_as_string(hide_password=False)) as conn:
                    conn.execute("SELECT 1")
                return self
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log_text = (self.workdir / "pgbouncer.log").read_text(errors="replace")
                    self.stop()
                    raise RuntimeError(f"pgbouncer did not start:\n{log_text}") from None
                time.sleep(0.1)

    def disconnect(self, database: str) -> None:
        """Close PgBouncer's server connections to `database` (what an operator does before
        using it as a template): KILL, then RESUME so that clients may connect again."""
        console = self.url("pgbouncer").set(drivername="postgresql")
        with psycopg.connect(
            console.render_as_string(hide_password=False), autocommit=True
        ) as conn:
            conn.execute(f"KILL {database}")  # type: ignore[arg-type]
            conn.execute(f"RESUME {database}")  # type: ignore[arg-type]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.workdir, ignore_errors=True)
