"""Tests of the throw-away slapd helper used by the ldap3 tests and benchmarks."""

from __future__ import annotations

import os
import shutil
import socket

import pytest

from connguard.demo.slapd import running_slapd

ldap3 = pytest.importorskip("ldap3")

pytestmark = pytest.mark.skipif(
    shutil.which("slapd") is None and not os.path.exists("/usr/sbin/slapd"),
    reason="slapd is not installed",
)


def _search_as_alice(url: str, user_dn: str, password: str) -> list[str]:
    server = ldap3.Server(url, connect_timeout=5)
    with ldap3.Connection(server, user=user_dn, password=password, receive_timeout=5) as conn:
        assert conn.bound
        conn.search("dc=example,dc=com", "(uid=alice)", attributes=["cn", "mail"])
        return [str(entry.cn) for entry in conn.entries]


def test_alice_binds_and_searches() -> None:
    """A user bind as alice succeeds and finds her own entry; a wrong password is rejected."""
    with running_slapd() as slapd:
        assert slapd.url == f"ldap://127.0.0.1:{slapd.port}"
        assert _search_as_alice(slapd.url, slapd.user_dn, slapd.user_password) == ["Alice Example"]
        bad = ldap3.Connection(ldap3.Server(slapd.url, connect_timeout=5), slapd.user_dn, "nope")
        assert not bad.bind()
        bad.unbind()
        admin = ldap3.Connection(
            ldap3.Server(slapd.url, connect_timeout=5), slapd.admin_dn, slapd.admin_password
        )
        assert admin.bind()
        admin.unbind()


def test_restart_keeps_port_and_data() -> None:
    """stop() refuses connections; start() serves the same data on the same port again."""
    with running_slapd() as slapd:
        port, first_pid = slapd.port, slapd.pid
        slapd.stop()
        assert slapd.pid is None
        # A plain socket: ldap3 leaks its socket when an open fails.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((slapd.host, port), timeout=2).close()
        slapd.start()
        assert slapd.port == port
        assert slapd.pid not in (None, first_pid)
        assert _search_as_alice(slapd.url, slapd.user_dn, slapd.user_password) == ["Alice Example"]
    assert slapd.pid is None
