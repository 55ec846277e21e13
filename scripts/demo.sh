#!/usr/bin/env bash
# The field incident on loopback, before and after connguard (well under a minute).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/connguard demo "$@"
