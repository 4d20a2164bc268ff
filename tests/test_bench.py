"""The benchmark harness's own parts (bench/): its CLI accepts what bench/README.md shows, it
runs the Procfile's processes, and its CPU accounting counts processes that exit."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
import redis

from bench import cpu
from bench.infra import PROCESSES, Infra, Stack, purge_unconsumed_queues
from bench.per_op import _patch_alone
from bench.report import percentile
from bench.run import parse_args
from scripts.procfile import read_procfile

from .stack import PrivateRedis

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


def readme_invocations() -> list[list[str]]:
    """The bench arguments of every `python bench/run.py ...` and `make bench BENCH_ARGS=...`
    line in bench/README.md."""
    found = []
    for line in (ROOT / "bench" / "README.md").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "bench/run.py" in line:
            found.append(shlex.split(line.split("bench/run.py", 1)[1]))
        elif (match := re.search(r"BENCH_ARGS=('[^']*'|\S+)", line)) is not None:
            found.append(shlex.split(shlex.split(match.group(1))[0]))
    return found


def test_every_readme_example_parses() -> None:
    examples = readme_invocations()
    assert len(examples) >= 5, examples
    for argv in examples:
        parse_args(argv)  # argparse exits on an unknown or malformed option


def test_the_processes_are_the_procfile_entries_with_bench_settings() -> None:
    infra = Infra("postgresql+psycopg://u@h/crm_bench", "postgresql://u@h/postgres", "redis://h")
    stack = Stack(infra, web_workers=3, web_threads=1, worker_concurrency=2, token_minutes=45)
    procfile = read_procfile()
    assert [p.name for p in stack.processes] == list(PROCESSES)
    for process in stack.processes:
        assert process.argv == ["sh", "-c", f"exec {procfile[process.name]}"]
    env = stack.env
    assert env["GUNICORN_BIND"] == f"127.0.0.1:{stack.port}"
    assert (env["WEB_CONCURRENCY"], env["WEB_THREADS"], env["WEB_WORKER_CLASS"]) == (
        "3",
        "1",
        "sync",
    )
    assert env["WORKER_CONCURRENCY"] == "2"
    assert env["DATABASE_URL"] == infra.database_url
    assert env["GUNICORN_CMD_ARGS"] == "--max-requests 0"
    assert env["BEAT_SCHEDULE_FILE"].endswith("celerybeat-schedule")


def test_only_the_queues_of_workers_not_started_are_purged(tmp_path: Path) -> None:
    server = PrivateRedis(tmp_path)
    server.start()
    client = redis.Redis.from_url(server.url)
    try:
        for queue in ("webhooks", "imports", "outbox", "bulk"):
            client.rpush(queue, "message")
        assert purge_unconsumed_queues(server.url) == 2
        assert sorted(k.decode() for k in client.keys("*")) == ["bulk", "outbox"]
    finally:
        client.close()
        server.kill()


BURN = "import time\nend = time.process_time() + {seconds}\nwhile time.process_time() < end: pass\n"


def test_a_group_counts_children_that_exited_through_their_parent() -> None:
    # The leader starts a child that burns 0.4 s of CPU, waits for it, then idles.
    script = (
        "import subprocess, sys, time\n"
        f"subprocess.run([sys.executable, '-c', {BURN.format(seconds=0.4)!r}])\n"
        "time.sleep(30)\n"
    )
    leader = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        groups = {"g": leader.pid}
        before = cpu.group_seconds(cpu.all_processes(), groups)["g"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until the child is gone and reaped
            children = Path(f"/proc/{leader.pid}/task/{leader.pid}/children")
            stat = cpu.read_stat(leader.pid)
            if stat and stat.reaped >= 0.35 and not children.read_text().split():
                break
            time.sleep(0.1)
        after = cpu.group_seconds(cpu.all_processes(), groups)["g"]
        assert after - before >= 0.35
    finally:
        leader.kill()
        leader.wait()


@pytest.mark.skipif(
    os.environ.get("TEST_PGBOUNCER") == "1",
    reason="through PgBouncer a closed client connection keeps its server backend; the"
    " backend accounting is tested on direct connections (the suite's first CI run)",
)
def test_a_backend_that_exits_keeps_its_cpu_in_the_database_figure(test_services) -> None:
    """A connection of the measured database runs a CPU-heavy query, is seen by the sampler,
    then closes: its CPU still counts (and the postmaster reaped it)."""
    admin = psycopg.connect(test_services.admin_url, autocommit=True)
    conn = psycopg.connect(test_services.database_url.replace("+psycopg", ""), autocommit=True)
    try:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        own = cpu.read_stat(pid)
        if own is None:
            pytest.skip("PostgreSQL does not run on this machine")
        postmaster = own.ppid
        monitor_pid = admin.execute("SELECT pg_backend_pid()").fetchone()[0]
        pg = cpu.PostgresCpu(postmaster, test_services.database_name, {monitor_pid})
        pg.start()
        base = cpu.read_stat(pid).own
        conn.execute("SELECT sum(i) FROM generate_series(1, 4000000) AS i")
        time.sleep(3 * cpu.SAMPLE_SECONDS)  # sampled at least once after the query
        spent = cpu.read_stat(pid).own - base
        conn.close()
        time.sleep(0.3)  # the postmaster reaps it
        used = pg.stop()
    finally:
        conn.close()
        admin.close()
    assert spent > 0.05
    assert used["bench_exited"] >= 1
    assert used["bench"] >= spent - 0.02
    assert used["reaped_any_database"] >= spent - 0.02


def test_nearest_rank_percentiles() -> None:
    values = [float(v) for v in range(1, 101)]
    assert [percentile(values, p) for p in (50, 95, 99, 100)] == [50.0, 95.0, 99.0, 100.0]
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) == 0.0


def test_patch_deal_is_counted_net_of_its_reads() -> None:
    rows = {
        "get_deal": {"cpu_ms_per_request": {"web": 2.0}},
        "patch_deal": {
            "requests_by_operation": {"get_deal": 10, "patch_deal": 10},
            "cpu_s": {"web": 0.1},  # 100 ms for 10 GETs (20 ms) and 10 PATCHes
            "cpu_ms_per_request": {"web": 5.0},
        },
    }
    _patch_alone(rows)
    assert rows["patch_deal"]["cpu_ms_per_request"] == {"web": pytest.approx(8.0)}
    assert rows["patch_deal"]["cpu_ms_per_request_with_get"] == {"web": 5.0}
