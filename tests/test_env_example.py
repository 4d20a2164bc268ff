"""Every setting the code reads is listed in .env.example and in the README's table."""

from __future__ import annotations

import re

from scripts.procfile import ROOT

SOURCES = ["crm_domain/settings.py", "gunicorn.conf.py", "Procfile", "scripts/devstack.py"]


def _settings_read() -> set[str]:
    names: set[str] = set()
    for source in SOURCES:
        text = (ROOT / source).read_text()
        names |= set(re.findall(r'env\.\w+\(\s*"([A-Z][A-Z0-9_]+)"', text))
        names |= set(re.findall(r'environ\.get\(\s*"([A-Z][A-Z0-9_]+)"', text))
        names |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]+)", text))
    return names


def test_every_setting_is_in_env_example_and_the_readme() -> None:
    names = _settings_read()
    assert {"DATABASE_URL", "SECRET_KEY", "BODY_READ_TIMEOUT", "WEB_THREADS"} <= names
    example = (ROOT / ".env.example").read_text()
    readme = (ROOT / "README.md").read_text()
    assert sorted(n for n in names if f"# {n}=" not in example) == []
    assert sorted(n for n in names if f"`{n}`" not in readme) == []


def _readme_defaults() -> dict[tuple[str, ...], str]:
    """{variables of a row: its default} from the README's Configuration table."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        names = re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[0]) if len(cells) == 3 else []
        if names:
            rows[tuple(names)] = cells[1]
    return rows


def _example_defaults() -> dict[tuple[str, ...], str]:
    """{variables of a block: its `default:` line} from .env.example."""
    blocks = {}
    for block in (ROOT / ".env.example").read_text().split("\n\n"):
        names = tuple(re.findall(r"^# ([A-Z][A-Z0-9_]+)=$", block, re.M))
        default = re.search(r"^#   default: (.*)$", block, re.M)
        if names and default:
            blocks[names] = default.group(1)
    return blocks


def test_env_example_and_the_readme_give_the_same_defaults() -> None:
    readme, example = _readme_defaults(), _example_defaults()
    assert ("WEB_CONCURRENCY", "WEB_THREADS", "WEB_WORKER_CLASS") in readme
    assert {names: readme[names] for names in readme if names in example} == {
        names: example[names] for names in readme if names in example
    }
    assert sorted(set(readme) - set(example)) == []
