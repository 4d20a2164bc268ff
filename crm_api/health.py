"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify
from sqlalchemy import text

bp = Blueprint("health", __name__)


@bp.get("/health")
def health() -> Any:
    """The process is up."""
    return jsonify(status="ok")


@bp.get("/ready")
def ready() -> Any:
    """The database and Redis answer. `warnings`: misconfigurations noticed meanwhile (a
    reverse proxy the API does not trust, crm_api.proxies); they do not make it unready."""
    checks: dict[str, str] = {}
    warnings: list[dict[str, Any]] = []
    try:
        with current_app.extensions["crm_db"].engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        # The app's own client (short timeouts), the one the analytics cache uses.
        current_app.extensions["crm_analytics"].client.ping()
        checks["redis"] = "ok"
        warnings += current_app.extensions["crm_proxy_warnings"].current()
    except Exception as exc:
        checks["redis"] = f"error: {type(exc).__name__}"
    ok = all(v == "ok" for v in checks.values())
    response = jsonify(status="ok" if ok else "unavailable", checks=checks, warnings=warnings)
    response.status_code = 200 if ok else 503
    return response
