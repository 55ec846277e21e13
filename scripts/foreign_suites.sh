#!/usr/bin/env bash
# Run urllib3's and redis-py's own test suites twice -- without connguard and with
# `connguard run` (defaults) -- and diff the failing test ids.
# Everything runs inside `unshare -n` with only `lo` up: no traffic leaves loopback.
# Usage: scripts/foreign_suites.sh [WORKDIR]   (default /tmp/foreign)
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
W="${1:-/tmp/foreign}"
VENV="$W/venv"
URLLIB3_SPEC="${URLLIB3_SPEC:-urllib3==2.*}"
REDIS_SPEC="${REDIS_SPEC:-redis}"
TIMEOUT="${SUITE_TIMEOUT:-900}"
TARPIT=127.77.0.1     # made silent by an nft drop rule inside the namespace
REDIS_PORT=16379

mkdir -p "$W/src" "$W/out"
cd "$W/src"
ls urllib3-*.tar.gz >/dev/null 2>&1 || pip download --no-binary :all: --no-deps "$URLLIB3_SPEC" -d .
ls redis-*.tar.gz >/dev/null 2>&1 || pip download --no-binary :all: --no-deps "$REDIS_SPEC" -d .
for t in urllib3-*.tar.gz redis-*.tar.gz; do [ -d "${t%.tar.gz}" ] || tar xzf "$t"; done
U="$(ls -d "$W"/src/urllib3-*/ | head -1)"; R="$(ls -d "$W"/src/redis-*/ | head -1)"
# urllib3 hard-codes TARPIT_HOST=240.0.0.0 (unreachable in the namespace): point it at loopback.
sed -i "s/TARPIT_HOST = \"240.0.0.0\"/TARPIT_HOST = \"$TARPIT\"/" "$U/test/__init__.py"

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q -e "$REPO" -e "$U" -e "$R" \
    'anyio[trio]>=4.8.0' h2 httpx hypercorn pysocks pytest pytest-socket pytest-timeout \
    quart quart-trio trio trustme cryptography idna pyopenssl \
    pytest-asyncio ujson numpy pybreaker aiohttp xxhash invoke click packaging
fi
PY="$VENV/bin/python"; CG="$VENV/bin/connguard"

# Subsets: connection / pool / retry / timeout / socket-level tests (full suites are too slow on 2 cores).
U_TESTS="test/test_connection.py test/test_connectionpool.py test/test_retry.py test/test_wait.py
 test/test_util.py test/test_poolmanager.py test/with_dummyserver/test_socketlevel.py
 test/with_dummyserver/test_connectionpool.py test/with_dummyserver/test_poolmanager.py"
R_TESTS="tests/test_connection.py tests/test_connection_pool.py tests/test_retry.py tests/test_commands.py tests/test_asyncio/test_connection.py tests/test_asyncio/test_connection_pool.py"

run_ns() {  # run_ns LABEL DIR PREFIX PYTEST-ARGS...: pytest in a private net namespace
  local label="$1" dir="$2" prefix="$3"; shift 3
  (cd "$dir" && timeout "$TIMEOUT" unshare -n sh -c '
    ip link set lo up
    nft add table ip cg_tarpit
    nft "add chain ip cg_tarpit out { type filter hook output priority 0 ; }"
    nft add rule ip cg_tarpit out ip daddr '"$TARPIT"' drop
    exec "$@"' sh $prefix "$PY" -m pytest -p no:cacheprovider -q -rfE --timeout 60 \
      --junitxml="$W/out/$label.xml" "$@" >"$W/out/$label.log" 2>&1) || true
  "$PY" - "$W/out/$label.xml" >"$W/out/$label.failed" <<'PYEOF'
import sys, xml.etree.ElementTree as ET
for tc in ET.parse(sys.argv[1]).iter("testcase"):
    if tc.find("failure") is not None or tc.find("error") is not None:
        print(f"{tc.get('classname')}::{tc.get('name')}")
PYEOF
  echo "$label: $(tail -1 "$W/out/$label.log")"
}

for mode in plain connguard; do
  prefix=""; [ "$mode" = connguard ] && prefix="$CG run --"
  run_ns "urllib3-$mode" "$U" "$prefix" -p no:asyncio $U_TESTS
  # redis-server runs inside the same namespace, started and stopped by PID.
  (cd "$R" && timeout "$TIMEOUT" unshare -n sh -c '
    ip link set lo up
    /usr/bin/redis-server --port '"$REDIS_PORT"' --bind 127.0.0.1 --save "" --appendonly no \
      --enable-debug-command yes >'"$W/out/redis-server-$mode.log"' 2>&1 &
    RPID=$!; sleep 1
    '"$prefix"' "'"$PY"'" -m pytest -p no:cacheprovider -q -rfE --timeout 60 \
      --junitxml='"$W/out/redis-$mode.xml"' --redis-url=redis://127.0.0.1:'"$REDIS_PORT"'/9 \
      -m "not redismod and not onlycluster and not ssl" '"$R_TESTS"' >'"$W/out/redis-$mode.log"' 2>&1
    kill $RPID') || true
  "$PY" - "$W/out/redis-$mode.xml" >"$W/out/redis-$mode.failed" <<'PYEOF'
import sys, xml.etree.ElementTree as ET
for tc in ET.parse(sys.argv[1]).iter("testcase"):
    if tc.find("failure") is not None or tc.find("error") is not None:
        print(f"{tc.get('classname')}::{tc.get('name')}")
PYEOF
  echo "redis-$mode: $(tail -1 "$W/out/redis-$mode.log")"
done

for s in urllib3 redis; do
  echo "== $s: failing only without connguard (<) / only with connguard (>)"
  diff <(sort "$W/out/$s-plain.failed") <(sort "$W/out/$s-connguard.failed") || true
done
