"""docker-compose.yml: the app services run as production and cannot start with a known secret."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


# compose's "${VAR:?message}": an error, not a default, when VAR is unset or empty
def _required(variable: str) -> str:
    return r"\$\{" + variable + r":\?[^}]+\}"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _app_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run this project's image (they are built from the Dockerfile)."""
    return {name: svc for name, svc in compose["services"].items() if "build" in svc}


def test_app_services_run_in_production_mode(compose: dict[str, Any]) -> None:
    apps = _app_services(compose)
    assert {"migrate", "web", "worker", "beat", "flower"} <= set(apps)
    for name, svc in apps.items():
        assert svc["environment"].get("CRM_ENV") == "production", name


@pytest.mark.parametrize("variable", ["SECRET_KEY", "FLOWER_BASIC_AUTH"])
def test_compose_refuses_to_start_without_real_credentials(
    compose: dict[str, Any], variable: str
) -> None:
    for name, svc in _app_services(compose).items():
        value = svc["environment"][variable]
        assert re.fullmatch(_required(variable), value), (name, value)  # no fallback value
    # and no literal secret hides anywhere else in the file
    text = (ROOT / "docker-compose.yml").read_text()
    assert not re.search(r"\$\{" + variable + r":?-", text)
