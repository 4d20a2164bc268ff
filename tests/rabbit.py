"""RabbitMQ for the tests (TEST_CELERY_BROKER=amqp): a virtual host of their own on the server.

Each test run, and each running stack within it, gets a vhost named after the run's database
(`crm_test_<pid>_<hex>[-<stack>]`), created with rabbitmqctl and deleted afterwards, so
parallel runs never share a queue and queues of earlier runs are never seen. Vhosts left by
runs that died (their pid is gone) are deleted when the next one starts.

TEST_RABBITMQ_URL is the server (default amqp://guest:guest@127.0.0.1:5672); rabbitmqctl
must be able to reach its node (it runs on this machine)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from urllib.parse import quote, urlsplit

from scripts.procfile import pid_alive

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672"
LEFTOVER = re.compile(r"^crm_test_(\d+)_[0-9a-f]+")


def server_url() -> str:
    return os.environ.get("TEST_RABBITMQ_URL", DEFAULT_URL).rstrip("/")


def rabbitmqctl(*args: str) -> str:
    binary = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    done = subprocess.run(
        [binary, "-q", *args], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr or done.stdout}")
    return done.stdout


def remove_leftovers() -> list[str]:
    """Delete the vhosts of test runs whose process is gone."""
    removed = []
    for name in rabbitmqctl("list_vhosts", "--no-table-headers", "name").split():
        match = LEFTOVER.match(name)
        if match and not pid_alive(int(match.group(1))):
            rabbitmqctl("delete_vhost", name)
            removed.append(name)
    return removed


class Vhost:
    """A virtual host on the test RabbitMQ, for one run or one stack."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.user = urlsplit(server_url()).username or "guest"

    @property
    def url(self) -> str:
        return f"{server_url()}/{quote(self.name, safe='')}"

    def create(self) -> Vhost:
        rabbitmqctl("add_vhost", self.name)
        rabbitmqctl("set_permissions", "-p", self.name, self.user, ".*", ".*", ".*")
        return self

    def queue_names(self) -> list[str]:
        return rabbitmqctl("list_queues", "--no-table-headers", "-p", self.name, "name").split()

    def stop(self) -> None:
        rabbitmqctl("delete_vhost", self.name)
