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
