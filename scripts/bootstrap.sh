#!/usr/bin/env bash
# Set up everything connguard's tests, benchmarks and demo need on a fresh machine:
# Debian packages (OpenLDAP's slapd, ldap-utils, redis-server, nftables, iproute2) and a virtualenv
# in .venv with connguard and its extras installed in editable mode. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v slapd >/dev/null 2>&1 || [ -x /usr/sbin/slapd ] || need_apt+=(slapd)
command -v ldapsearch >/dev/null 2>&1 || need_apt+=(ldap-utils)
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || need_apt+=(redis-server)
command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || need_apt+=(nftables)
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || need_apt+=(iproute2)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "bootstrap: installing ${need_apt[*]} with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
    # Debian's package starts a system slapd; the tests run their own. Stop it through
    # its service or its pid file, never by name.
    if [[ " ${need_apt[*]} " == *" slapd "* ]]; then
      if command -v systemctl >/dev/null 2>&1; then systemctl stop slapd >/dev/null 2>&1 || true; fi
      if command -v service >/dev/null 2>&1; then service slapd stop >/dev/null 2>&1 || true; fi
      pidfile=/run/slapd/slapd.pid
      if [ -s "$pidfile" ]; then kill "$(cat "$pidfile")" >/dev/null 2>&1 || true; fi
    fi
    # Debian's redis-server package may start a system redis too; the tests start their
    # own. Stop it through its service or its pid file, never by name.
    if [[ " ${need_apt[*]} " == *" redis-server "* ]]; then
      if command -v systemctl >/dev/null 2>&1; then systemctl stop redis-server >/dev/null 2>&1 || true; fi
      if command -v service >/dev/null 2>&1; then service redis-server stop >/dev/null 2>&1 || true; fi
      pidfile=/run/redis/redis-server.pid
      if [ -s "$pidfile" ]; then kill "$(cat "$pidfile")" >/dev/null 2>&1 || true; fi
    fi
  else
    echo "bootstrap: not root, cannot install ${need_apt[*]}; tests needing them will skip" >&2
  fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[all,dev]'
