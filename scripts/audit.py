"""`make audit`: known vulnerabilities in the locked set, and which of them fail the build.

pip-audit reads requirements/dev.txt (every locked package: what CI installs) and asks PyPI's
advisory data about each pinned release (network needed). The policy (docs/DEPENDENCIES.md):

- fails (exit 1): a vulnerability with a fixed release, in a package the image ships
  (requirements/app.txt), unless requirements/audit-accepted.txt lists its id (each line
  `ID  # why`, the reasoning in docs/DEPENDENCIES.md): there is something to do, and it
  matters in production;
- reported only: findings in development-only packages (never shipped; in CI they run on
  this repository's own code), findings without a fixed release (nothing to upgrade to:
  judge a mitigation), and packages the service could not audit (`--strict`, i.e.
  `make audit AUDIT_STRICT=1`, fails on those and on an unreachable service too)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LOCKED = ROOT / "requirements" / "dev.txt"
SHIPPED = ROOT / "requirements" / "app.txt"
ACCEPTED = ROOT / "requirements" / "audit-accepted.txt"


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def pinned_names(requirements: Path) -> set[str]:
    """The package names a `name==version` requirements file pins."""
    names = set()
    for line in requirements.read_text().splitlines():
        if line and not line[0].isspace() and not line.startswith(("#", "-")):
            names.add(_canonical(line.split("==", 1)[0].split(";", 1)[0].strip()))
    return names


def accepted_ids(path: Path) -> set[str]:
    if not path.exists():
        return set()
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return {line for line in lines if line}


@dataclass(frozen=True)
class Finding:
    package: str
    version: str
    id: str
    fixed_in: tuple[str, ...]
    shipped: bool

    def __str__(self) -> str:
        fix = f"fixed in {', '.join(self.fixed_in)}" if self.fixed_in else "no fixed release"
        where = "shipped" if self.shipped else "development only"
        return f"{self.package} {self.version}: {self.id} ({fix}; {where})"


@dataclass(frozen=True)
class Verdict:
    actionable: list[Finding]
    reported: list[Finding]
    accepted: list[Finding]
    unaudited: list[str]


def judge(report: dict[str, Any], shipped: Iterable[str], accepted: set[str]) -> Verdict:
    """Sort a pip-audit JSON report's findings by the policy above."""
    shipped = {_canonical(name) for name in shipped}
    actionable, reported, kept, unaudited = [], [], [], []
    for dependency in report["dependencies"]:
        if "skip_reason" in dependency:
            unaudited.append(f"{dependency['name']}: {dependency['skip_reason']}")
            continue
        for vuln in dependency.get("vulns", []):
            finding = Finding(
                package=dependency["name"],
                version=dependency.get("version", "?"),
                id=vuln["id"],
                fixed_in=tuple(vuln.get("fix_versions") or ()),
                shipped=_canonical(dependency["name"]) in shipped,
            )
            if {vuln["id"], *vuln.get("aliases", [])} & accepted:
                kept.append(finding)
            elif finding.shipped and finding.fixed_in:
                actionable.append(finding)
            else:
                reported.append(finding)
    return Verdict(actionable, reported, kept, unaudited)


def run_pip_audit() -> dict[str, Any] | None:
    """pip-audit's JSON report of the locked set, or None when it could not run."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "audit.json"
        done = subprocess.run(
            [
                str(Path(sys.executable).parent / "pip-audit"),
                "--disable-pip",
                "--require-hashes",
                "--requirement",
                str(LOCKED),
                "--format",
                "json",
                "--output",
                str(out),
                "--progress-spinner",
                "off",
            ],
            capture_output=True,
            text=True,
        )
        if not out.exists():  # the advisory service was unreachable, or pip-audit broke
            reason = (done.stderr.strip().splitlines() or [done.stdout.strip()])[-1]
            print(f"pip-audit: {reason}", file=sys.stderr)
            return None
        report: dict[str, Any] = json.loads(out.read_text())
        return report


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strict", action="store_true", help="fail on what was not audited")
    strict = parser.parse_args(argv).strict
    report = run_pip_audit()
    if report is None:
        print("audit: NOTHING AUDITED: pip-audit could not get the advisory data")
        return 1 if strict else 0
    verdict = judge(report, pinned_names(SHIPPED), accepted_ids(ACCEPTED))
    total = len(report["dependencies"])
    print(f"audit: {total - len(verdict.unaudited)} of {total} locked packages audited")
    for title, findings in (
        ("accepted (requirements/audit-accepted.txt)", verdict.accepted),
        ("reported (development only, or no fixed release)", verdict.reported),
        ("ACTIONABLE (shipped, a fixed release exists)", verdict.actionable),
    ):
        if findings:
            print(f"{title}:")
            for finding in findings:
                print(f"  {finding}")
    if verdict.unaudited:
        print(f"not audited ({len(verdict.unaudited)}), e.g. {verdict.unaudited[0]}")
        if len(verdict.unaudited) == total:
            print("audit: WARNING: NOTHING AUDITED (is PyPI's advisory data reachable?)")
    if verdict.actionable or (strict and verdict.unaudited):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
