"""`.env` in the working directory, read by the app and the workers (crm_domain.settings) and
by `make run`'s launcher (scripts/devstack.py), which hands it to every process it starts;
and `devstack.py exec`, which runs a command against the running stack."""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jwt
import pytest
from sqlalchemy import insert, select

from crm_domain.db import Database
from crm_domain.embedded import free_port
from crm_domain.models import Deal, User
from crm_domain.settings import Settings, log_format_from_env

from .stack import wait_until

ROOT = Path(__file__).resolve().parent.parent
DEVSTACK = ROOT / "scripts" / "devstack.py"


def test_settings_read_dotenv_in_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / ".env").write_text("BCRYPT_ROUNDS=7\nINVITATION_DAYS=3\nLOG_FORMAT=json\n")
    monkeypatch.delenv("BCRYPT_ROUNDS", raising=False)
    monkeypatch.delenv("LOG_FORMAT", raising=False)
    monkeypatch.setenv("INVITATION_DAYS", "9")  # the environment wins
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env()
    assert (settings.bcrypt_rounds, settings.invitation_days) == (7, 9)
    assert log_format_from_env() == "json"  # gunicorn.conf.py's reader too
    # only the working directory's: no walking up into the parents
    (tmp_path / "below").mkdir()
    monkeypatch.chdir(tmp_path / "below")
    assert Settings.from_env().bcrypt_rounds == 12


def test_exec_without_a_running_stack_says_so(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(DEVSTACK), "exec", "true"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "no running `make run`" in done.stdout


def _http(
    url: str, body: Any = None, *, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


def _basic(credentials: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}


@pytest.mark.worker
def test_make_run_honours_dotenv_and_exec_reaches_its_embedded_redis(
    scratch, tmp_path: Path
) -> None:
    """`make run`'s launcher in a directory whose .env names the database, the key, Flower's
    password and the ports, but no Redis (so the launcher starts an embedded one): every
    process uses .env's values, and `devstack.py exec` runs the CLI against the stack."""
    scratch.admin(f'CREATE DATABASE "{scratch.name}"')  # empty: the launcher migrates it
    port, flower_port = free_port(), free_port()
    key = secrets.token_urlsafe(32)
    (tmp_path / ".env").write_text(
        "\n".join(
            [
                f"DATABASE_URL={scratch.libpq_url()}",
                f"SECRET_KEY={key}",
                "FLOWER_BASIC_AUTH=admin:s3cret",
                f"PORT={port}",
                f"FLOWER_PORT={flower_port}",
                # a small stack on a shared 2-core machine
                "WEB_CONCURRENCY=1",
                "WEB_THREADS=4",
                "WORKER_CONCURRENCY=1",
                "WEBHOOK_CONCURRENCY=2",
                "BCRYPT_ROUNDS=4",
            ]
        )
        + "\n"
    )
    environment = {  # nothing of the test run's own settings
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", str(tmp_path)),
        "PYTHONUNBUFFERED": "1",
    }
    log_path = tmp_path / "devstack.log"
    with log_path.open("wb") as out:
        launcher = subprocess.Popen(
            [sys.executable, str(DEVSTACK)],
            cwd=tmp_path,
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    stack_file = tmp_path / ".data" / "stack.json"
    try:
        wait_until(lambda: _http(f"{base}/ready")[0] == 200 and stack_file.exists(), 180, 0.5)
        # Flower: .env's password, not the development default
        flower = f"http://127.0.0.1:{flower_port}/"
        wait_until(lambda: _http(flower, headers=_basic("admin:s3cret"))[0] == 200, 120, 0.5)
        assert _http(flower, headers=_basic("admin:admin"))[0] == 401
        # the API: .env's database and .env's signing key
        status, raw = _http(
            f"{base}/api/v1/auth/register",
            {
                "email": "dotenv@example.com",
                "password": "StrongPassword123",
                "name": "Dot Env",
                "organization_name": "Dotenv Inc",
            },
        )
        assert status == 201, raw
        body = json.loads(raw)
        claims = jwt.decode(body["access_token"], key, algorithms=["HS256"])
        assert claims["sub"] == str(body["user"]["id"])
        db = Database.from_settings(Settings(), url=scratch.url, pool_size=1)
        try:
            with db.transaction() as session:
                assert session.scalar(select(User.id).where(User.email == "dotenv@example.com"))
            assert not (tmp_path / ".data" / "pg").exists()  # no embedded PostgreSQL
            assert not (tmp_path / ".data" / "secret_key").exists()
            assert stat.S_IMODE(stack_file.stat().st_mode) == 0o600  # it holds the key

            # A deal written behind the API's back shows in the analytics only once the CLI's
            # refresh wrote to the stack's (embedded) Redis.
            token, org = body["access_token"], body["organization"]["id"]
            auth = {"Authorization": f"Bearer {token}", "X-Organization-Id": str(org)}
            summary = f"{base}/api/v1/analytics/deals/summary"
            status, raw = _http(f"{base}/api/v1/contacts", {"name": "C"}, headers=auth)
            assert status == 201, raw
            assert json.loads(_http(summary, headers=auth)[1])["total_deals"] == 0
            with db.transaction() as session:
                session.execute(
                    insert(Deal).values(
                        organization_id=org,
                        contact_id=json.loads(raw)["id"],
                        owner_id=body["user"]["id"],
                        title="Behind the API",
                    )
                )
        finally:
            db.engine.dispose()
        command = ["flask", "--app", "wsgi", "crm", "refresh-analytics", "--org", str(org)]
        done = subprocess.run(
            [sys.executable, str(DEVSTACK), "exec", *command],
            cwd=tmp_path,
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "organizations refreshed: 1" in done.stdout
        assert json.loads(_http(summary, headers=auth)[1])["total_deals"] == 1
    finally:
        if launcher.poll() is None:
            launcher.send_signal(signal.SIGINT)
        try:
            launcher.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait(10)
    log = log_path.read_text(errors="replace")
    assert launcher.returncode == 0, log[-3000:]
    assert "starting embedded Redis" in log and "embedded PostgreSQL" not in log
    assert not stack_file.exists()  # gone with the stack
