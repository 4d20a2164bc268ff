"""The harness's fixed names and paths, and its log line."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

from crm_domain.enums import DealStage, DealStatus

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DATA = ROOT / ".data" / "bench"

DB_NAME = "crm_bench"
KEY_PREFIX = "bench"
API = "/api/v1"
PASSWORD = "BenchPassword123"
ORG_NAME = "Bench Org"
SECRET_KEY = "bench-secret-key-0123456789abcdef0123456789abcdef"
# (role in the bench organization, email, display name)
SEED_USERS = (
    ("owner", "owner@bench.example.com", "Olivia Owner"),
    ("manager", "manager@bench.example.com", "Manny Manager"),
    ("member", "member@bench.example.com", "Mia Member"),
)
STATUSES = tuple(s.value for s in DealStatus)
STAGES = tuple(s.value for s in DealStage)  # in pipeline order
CURRENCIES = ("USD", "EUR", "GBP")
# ISO 4217's code for testing: only the freshness probe's deals use it, so their figures in
# the analytics summary change only when the probe writes.
PROBE_CURRENCY = "XTS"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def utc_today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()
