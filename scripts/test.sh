#!/usr/bin/env bash
# The whole test suite on a fresh machine: set-up, lint, type check, docs site, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/ruff check connguard tests benchmarks
.venv/bin/ruff format --check connguard tests benchmarks
.venv/bin/mypy
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --site-dir build/site
.venv/bin/python -m pytest --cov --cov-report=term:skip-covered "$@"
