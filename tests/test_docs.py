"""The docs stay true to the code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from connguard._config import SETTINGS

ROOT = Path(__file__).resolve().parent.parent


def test_every_variable_is_documented() -> None:
    """docs/configuration.md has a row for every CONNGUARD_* variable the code reads."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    missing = [s.variable for s in SETTINGS if f"| `{s.variable}` |" not in text]
    assert missing == []


def test_configuration_reference_is_generated_from_the_settings() -> None:
    """docs/configuration.md's table is what scripts/gen_config_docs.py renders now."""
    import runpy

    page = ROOT / "docs" / "configuration.md"
    render = runpy.run_path(str(ROOT / "scripts" / "gen_config_docs.py"))["render"]
    text = page.read_text()
    assert render(text) == text, "stale: run python scripts/gen_config_docs.py"


def test_readme_names_the_two_commands_and_ci_runs_the_test_one() -> None:
    """README gives the demo and test commands; .ci/run calls exactly the test command."""
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/demo.sh" in readme
    assert "bash scripts/test.sh" in readme
    assert "exec bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_docs_navigation_points_at_existing_pages() -> None:
    """Every page in mkdocs.yml's nav exists."""
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = [
        line.split(": ")[-1].strip() for line in nav.splitlines() if line.strip().endswith(".md")
    ]
    missing = [p for p in pages if not (ROOT / "docs" / p).exists()]
    assert missing == []


def test_api_reference_covers_every_public_name(tmp_path: Path) -> None:
    """The generated API page has an entry for each name in the public modules' __all__."""
    pytest.importorskip("mkdocstrings")
    import connguard
    import connguard.httpx
    import connguard.testing

    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    page = (site / "api" / "index.html").read_text()
    modules = (connguard, connguard.httpx, connguard.testing)
    names = [f"{m.__name__}.{name}" for m in modules for name in m.__all__]
    missing = [name for name in names if f'id="{name}"' not in page]
    assert missing == []
