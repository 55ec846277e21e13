"""The docs stay true to the code."""

from __future__ import annotations

from pathlib import Path

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
