"""Hostile values and addresses (issue 14 rows F2, F3, M1, M2, M3): clear errors, or
exactly what the application sees without connguard."""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from contextlib import closing
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import connguard
from connguard import ConfigError
from connguard.testing import blackhole


@pytest.mark.parametrize("value", ["1e10", "1e308", "86401"])
@pytest.mark.parametrize("variable", ["CONNGUARD_CONNECT_TIMEOUT", "CONNGUARD_MAX_OPEN_SECONDS"])
def test_seconds_beyond_a_day_are_a_config_error(variable: str, value: str) -> None:
    """A ceiling the OS's timers cannot take is refused at install, naming the variable."""
    with pytest.raises(ConfigError, match=variable):
        connguard.install(environ={variable: value})


def test_largest_accepted_ceiling_connects() -> None:
    """A one-day ceiling is accepted and a connect under it works (no OverflowError)."""
    connguard.install(environ={"CONNGUARD_CONNECT_TIMEOUT": "86400"})
    with socket.create_server(("127.0.0.1", 0)) as server, closing(socket.socket()) as sock:
        assert sock.connect_ex(server.getsockname()) == 0


def test_connect_ex_on_a_closed_socket_answers_as_without_connguard() -> None:
    """connect_ex on a closed socket returns EBADF instead of raising."""
    connguard.install(environ={})
    sock = socket.socket()
    sock.close()
    assert sock.connect_ex(("127.0.0.1", 9)) == errno.EBADF


@pytest.mark.parametrize("text", [",", " , ,"])
def test_integrations_naming_nothing_is_a_config_error(text: str) -> None:
    """CONNGUARD_INTEGRATIONS that names no integration is refused, not a silent no-op."""
    with pytest.raises(ConfigError, match="CONNGUARD_INTEGRATIONS"):
        connguard.install(environ={"CONNGUARD_INTEGRATIONS": text})


def test_override_errors_name_the_override_entry() -> None:
    """A bad value inside CONNGUARD_OVERRIDES is reported against that override."""
    with pytest.raises(ConfigError, match=r"CONNGUARD_OVERRIDES.*'a:1' precheck='bogus'"):
        connguard.install(environ={"CONNGUARD_OVERRIDES": "a:1 precheck=bogus"})


def test_duplicate_override_keys_are_a_config_error() -> None:
    """The same key twice in one override entry is refused."""
    with pytest.raises(ConfigError, match="given twice"):
        connguard.install(
            environ={"CONNGUARD_OVERRIDES": "a:1 connect_timeout=1 connect_timeout=2"}
        )


def _outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", call()
    except BaseException as exc:
        return type(exc).__name__, getattr(exc, "errno", None)


_BAD_ADDRESSES: list[Any] = [
    ("127.0.0.1", 70000),
    ("127.0.0.1", -1),
    ("127.0.0.1", 2**70),
    ("127.0.0.1", None),
    ("127.0.0.1", "80"),
    ("", 80),
    ("127.0.0.1\x00", 80),
    (b"127.0.0.1", 1),
    ("127.0.0.1", True),
]


@pytest.mark.parametrize("address", _BAD_ADDRESSES, ids=repr)
@pytest.mark.parametrize("method", ["connect", "connect_ex"])
def test_bad_addresses_pass_through_and_leave_nothing(address: Any, method: str) -> None:
    """A bad address gets exactly the real call's answer and leaves no endpoint behind."""

    def call() -> Any:
        with closing(socket.socket()) as sock:
            sock.settimeout(0.5)
            return getattr(sock, method)(address)

    without = _outcome(call)
    connguard.install(environ={})
    assert _outcome(call) == without
    assert connguard.status() == []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    host=st.one_of(st.text(max_size=12), st.binary(max_size=6)),
    port=st.one_of(st.integers(-(2**40), 2**40), st.none(), st.text(max_size=3)),
)
def test_property_odd_addresses_behave_as_without_connguard(host: Any, port: Any) -> None:
    """Whatever the address, connect_ex's answer with connguard is the one without it."""

    def call() -> Any:
        with closing(socket.socket()) as sock:
            sock.setblocking(False)  # never waits, whatever the address resolves to
            return sock.connect_ex((host, port))

    connguard.uninstall()
    if isinstance(host, str) and host and not host.isascii():
        return  # IDNA lookups may consult the resolver: not loopback-only
    if isinstance(host, str | bytes) and host not in ("", b"") and not _literal(host):
        return  # a name would be resolved through DNS: stay on loopback
    without = _outcome(call)
    connguard.install(environ={})
    try:
        assert _outcome(call) == without
    finally:
        connguard.uninstall()


def _literal(host: str | bytes) -> bool:
    text = host.decode("ascii", "replace") if isinstance(host, bytes) else host
    try:
        socket.inet_pton(socket.AF_INET, text)
    except (OSError, ValueError):
        return False
    return text.startswith("127.")


def test_blackhole_helper_still_works_with_bad_values_around() -> None:
    """The guard keeps working for real endpoints after a run of bad addresses."""
    connguard.install(environ={}, connect_timeout=0.3)
    for address in _BAD_ADDRESSES:
        with closing(socket.socket()) as sock:
            _outcome(lambda s=sock, a=address: s.connect_ex(a))
    with blackhole() as dead, closing(socket.socket()) as sock:
        assert sock.connect_ex(dead.address) == errno.ETIMEDOUT
    assert [r["state"] for r in connguard.status()] == ["open"]
