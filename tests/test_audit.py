"""`make audit`'s policy (scripts/audit.py) on pip-audit's JSON report: only a fixed
vulnerability in a package the image ships fails the build."""

from __future__ import annotations

from pathlib import Path

from scripts.audit import SHIPPED, accepted_ids, judge, pinned_names


def _vuln(id_: str, *fixed: str, aliases: tuple[str, ...] = ()) -> dict[str, object]:
    return {"id": id_, "fix_versions": list(fixed), "aliases": list(aliases)}


REPORT = {
    "dependencies": [
        {"name": "Werkzeug", "version": "3.1.0", "vulns": [_vuln("GHSA-ship-fix", "3.1.4")]},
        {"name": "jinja2", "version": "3.1.5", "vulns": [_vuln("PYSEC-ship-nofix")]},
        {"name": "pytest", "version": "8.0.0", "vulns": [_vuln("GHSA-dev-fix", "8.0.1")]},
        {"name": "celery", "version": "5.5", "vulns": [_vuln("X-1", "5.5.1", aliases=("CVE-1",))]},
        {"name": "flask", "version": "3.1.3", "vulns": []},
        {"name": "six", "skip_reason": "Dependency not found on PyPI and could not be audited"},
    ],
    "fixes": [],
}


def test_only_fixed_vulnerabilities_in_shipped_packages_fail() -> None:
    shipped = pinned_names(SHIPPED)
    assert {"werkzeug", "jinja2", "celery", "flask"} <= shipped and "pytest" not in shipped
    verdict = judge(REPORT, shipped, accepted={"CVE-1"})
    assert [f.id for f in verdict.actionable] == ["GHSA-ship-fix"]
    assert [f.id for f in verdict.reported] == ["PYSEC-ship-nofix", "GHSA-dev-fix"]
    assert [f.id for f in verdict.accepted] == ["X-1"]  # accepted by an alias
    assert [u.split(":")[0] for u in verdict.unaudited] == ["six"]


def test_accepted_ids_ignore_comments(tmp_path: Path) -> None:
    listed = tmp_path / "accepted.txt"
    listed.write_text("# header\nGHSA-aaaa  # werkzeug: why\n\nPYSEC-1\n")
    assert accepted_ids(listed) == {"GHSA-aaaa", "PYSEC-1"}
    assert accepted_ids(tmp_path / "missing.txt") == set()
