"""ldap3 integration against a real OpenLDAP server (tests/slapd.py) and loopback blackholes."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import wrapt

import connguard
from connguard.demo.slapd import SlapdServer, running_slapd
from connguard.testing import blackhole

ldap3 = pytest.importorskip("ldap3")
from ldap3.core.exceptions import (  # noqa: E402
    LDAPServerPoolExhaustedError,
    LDAPSocketOpenError,
)

pytestmark = pytest.mark.skipif(
    shutil.which("slapd") is None and not os.path.exists("/usr/sbin/slapd"),
    reason="slapd is not installed",
)

# Small deadlines keep a blackhole cheap: a dead connect costs DEADLINE seconds.
DEADLINE = 0.5
SETTINGS: dict[str, Any] = {
    "integrations": "socket,ldap3",
    "connect_timeout": DEADLINE,
    "min_connect_timeout": 0.2,
    "open_seconds": 30,  # no recovery trial during a test unless the test asks for one
    "max_open_seconds": 60,
    "costly_failure": 0,  # refused loopback ports stand in for dead servers
}
FAST = 0.1  # generous bound for "fails fast" on a noisy 2-core machine


@pytest.fixture(scope="module")
def slapd() -> Iterator[SlapdServer]:
    """One live directory server for the module."""
    with running_slapd() as server:
        yield server


@contextmanager
def counting_connects() -> Iterator[Counter[tuple[str, int]]]:
    """Count the connects that reach the kernel, per (host, port).

    Installed below connguard (enter it before ``connguard.install()``), so a
    connect that connguard fails fast is not counted: every count is a SYN sent.
    """
    counts: Counter[tuple[str, int]] = Counter()
    lock = threading.Lock()

    def count(wrapped: Any, sock: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        address = args[0] if args else None
        if isinstance(address, tuple) and sock.type == socket.SOCK_STREAM:
            with lock:
                counts[(address[0], address[1])] += 1
        return wrapped(*args, **kwargs)

    for name in ("connect", "connect_ex"):
        wrapt.wrap_object(socket.socket, name, wrapt.FunctionWrapper, (count,))
    try:
        yield counts
    finally:
        connguard.uninstall()  # connguard sits on top: unwrap it first
        for name in ("connect", "connect_ex"):
            delattr(socket.socket, name)


@contextmanager
def counting_attempts() -> Iterator[Counter[tuple[str, int]]]:
    """Count connect() calls made on top of connguard (enter it after ``install()``)."""
    counts: Counter[tuple[str, int]] = Counter()

    def count(wrapped: Any, sock: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if args and isinstance(args[0], tuple):
            counts[(args[0][0], args[0][1])] += 1
        return wrapped(*args, **kwargs)

    previous = {name: vars(socket.socket)[name] for name in ("connect", "connect_ex")}
    for name in previous:
        wrapt.wrap_object(socket.socket, name, wrapt.FunctionWrapper, (count,))
    try:
        yield counts
    finally:
        for name, attribute in previous.items():
            setattr(socket.socket, name, attribute)


def try_bind(server: Any, user: str, password: str) -> tuple[float, BaseException | None]:
    """Open a new connection and bind; return (seconds taken, exception or None)."""
    conn = ldap3.Connection(server, user=user, password=password, receive_timeout=5)
    started = time.monotonic()
    try:
        assert conn.bind()
    except Exception as exc:
        return time.monotonic() - started, exc
    else:
        return time.monotonic() - started, None
    finally:
        _close(conn)


def _close(conn: Any) -> None:
    # ldap3 keeps the socket of a failed open: close it (ResourceWarning is an error here).
    if conn.bound:
        conn.unbind()
    sock = getattr(conn, "socket", None)
    if sock is not None:
        sock.close()


def dead_server(hole: Any, **kwargs: Any) -> Any:
    return ldap3.Server(f"ldap://{hole.host}:{hole.port}", **kwargs)


def test_healthy_bind_and_search(slapd: SlapdServer) -> None:
    """A connection created before install() binds and searches through the guard."""
    early = ldap3.Connection(ldap3.Server(slapd.url), slapd.user_dn, slapd.user_password)
    assert connguard.install(**SETTINGS)
    try:
        assert early.bind()
        early.search(slapd.suffix, "(uid=alice)", attributes=["mail"])
        assert [str(e.mail) for e in early.entries] == ["alice@example.com"]
    finally:
        _close(early)
    _, error = try_bind(ldap3.Server(slapd.url), slapd.user_dn, slapd.user_password)
    assert error is None
    (record,) = [r for r in connguard.status() if r["endpoint"] == f"127.0.0.1:{slapd.port}"]
    assert record["state"] == "closed"
    assert record["successes"] >= 2


def test_blackholed_server_costs_one_deadline_then_fails_fast(slapd: SlapdServer) -> None:
    """The first bind to a dead server pays one deadline; later binds fail in microseconds."""
    with blackhole() as hole, counting_connects() as counts:
        connguard.install(**SETTINGS)
        # A fresh Server per login (ldap3 itself skips a failed address of a shared
        # Server for 5 s; connguard must not depend on that).
        first, error = try_bind(dead_server(hole), slapd.user_dn, slapd.user_password)
        assert isinstance(error, LDAPSocketOpenError)
        assert isinstance(error, TimeoutError)
        assert DEADLINE * 0.8 <= first < DEADLINE + 1.5
        for _ in range(5):
            later, error = try_bind(dead_server(hole), slapd.user_dn, slapd.user_password)
            assert isinstance(error, LDAPSocketOpenError)
            assert isinstance(error, connguard.EndpointUnavailable)
            assert f"127.0.0.1:{hole.port}" in str(error)
            assert later < FAST
        assert counts[hole.address] == 1


def test_fast_failure_is_raised_before_a_socket_is_made(slapd: SlapdServer) -> None:
    """A fast failure in _open_socket is raised before a socket is made, as LDAPSocketOpenError."""
    with blackhole() as hole:
        connguard.install(**SETTINGS)
        try_bind(dead_server(hole), slapd.user_dn, slapd.user_password)
        conn = ldap3.Connection(dead_server(hole), slapd.user_dn, slapd.user_password)
        with pytest.raises(LDAPSocketOpenError) as caught:
            conn.open()
        assert conn.socket is None  # no socket was even created
        assert conn.last_error.startswith("socket connection error while opening: connguard:")
        # ldap3 rebuilds errors as type(e)(str(e)): the text must survive that unchanged.
        rebuilt = type(caught.value)(str(caught.value))
        assert str(rebuilt) == str(caught.value) == conn.last_error
        assert isinstance(caught.value, TimeoutError)  # the blackhole timed out: same kind


# ldap3 drops (does not close) the socket of a failed candidate address before trying
# the next one; that upstream leak is not what this test is about.
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"
)
def test_fast_failure_moves_on_to_the_next_address(monkeypatch: pytest.MonkeyPatch) -> None:
    """A name with a dead and a live address binds via the live one, without touching the dead."""
    with blackhole("127.0.0.1") as hole, running_slapd(hole.port, "127.0.0.2") as live:
        resolve = socket.getaddrinfo

        def two_addresses(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            # Stand-in for DNS (no test may edit /etc/hosts): dead address first.
            if host != "directory.test":
                return resolve(host, port, *args, **kwargs)
            return [
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))
                for address in (hole.host, live.host)
            ]

        monkeypatch.setattr(socket, "getaddrinfo", two_addresses)
        with counting_connects() as counts:
            connguard.install(**SETTINGS)
            url = f"ldap://directory.test:{hole.port}"
            times = []
            for _ in range(4):
                elapsed, error = try_bind(ldap3.Server(url), live.user_dn, live.user_password)
                assert error is None
                times.append(elapsed)
            assert counts[hole.address] == 1
            assert counts[(live.host, live.port)] == 4
            assert DEADLINE * 0.8 <= times[0] < DEADLINE + 1.5
            assert max(times[1:]) < DEADLINE * 0.8


@pytest.mark.parametrize("connect_timeout", [None, 30])
def test_server_connect_timeout_is_bounded_without_mutation(
    slapd: SlapdServer, connect_timeout: int | None
) -> None:
    """Server(connect_timeout=None or long) is bounded by the deadline; the Server is unchanged."""
    with blackhole() as hole:
        connguard.install(**SETTINGS)
        server = dead_server(hole, connect_timeout=connect_timeout)
        elapsed, error = try_bind(server, slapd.user_dn, slapd.user_password)
        assert isinstance(error, LDAPSocketOpenError)
        assert elapsed < DEADLINE + 1.5
        assert server.connect_timeout == connect_timeout


@pytest.mark.parametrize("make_pool", ["ServerPool(FIRST)", "ServerPool(ROUND_ROBIN)", "list"])
def test_pool_skips_known_dead_server_without_connecting(
    slapd: SlapdServer, make_pool: str
) -> None:
    """A pool [dead, live] binds to the live server; the dead one costs one probe, then none."""
    with blackhole() as hole, counting_connects() as counts:
        connguard.install(**SETTINGS)
        servers = [dead_server(hole), ldap3.Server(slapd.url)]
        if make_pool == "list":
            pool: Any = servers  # Connection builds ServerPool(ROUND_ROBIN, active, exhaust)
        else:
            strategy = ldap3.FIRST if "FIRST" in make_pool else ldap3.ROUND_ROBIN
            pool = ldap3.ServerPool(servers, strategy, active=True, exhaust=False)
        # Round robin starts anywhere; within 7 binds the dead server is visited
        # several times, but only its first visit may cost a probe (and a deadline).
        times = []
        for _ in range(7):
            elapsed, error = try_bind(pool, slapd.user_dn, slapd.user_password)
            assert error is None
            times.append(elapsed)
        assert counts[hole.address] == 1
        assert counts[("127.0.0.1", slapd.port)] >= 7
        assert sorted(times)[-2] < DEADLINE * 0.8  # one bind paid the deadline, no other
        assert max(times) < DEADLINE + 1.5


def test_check_availability_answers_from_the_circuit(slapd: SlapdServer) -> None:
    """Server.check_availability is False at once, without a probe, for an open endpoint."""
    with blackhole() as hole, counting_connects() as counts:
        connguard.install(**SETTINGS)
        server = dead_server(hole)
        assert server.check_availability() is False  # the one probe that learns it
        assert counts[hole.address] == 1
        with counting_attempts() as attempts:  # above connguard: every connect() call
            started = time.monotonic()
            assert server.check_availability() is False
            assert time.monotonic() - started < FAST
        assert attempts[hole.address] == 0  # not even a connect() that connguard refuses
        assert counts[hole.address] == 1
        assert all(address[5] is False for address in server.address_info)
        assert ldap3.Server(slapd.url).check_availability() is True


@pytest.mark.parametrize(
    "make_pool", ["ServerPool(ROUND_ROBIN)", "ServerPool(FIRST)", "ServerPool(RANDOM)", "list"]
)
def test_all_dead_pool_fails_fast(slapd: SlapdServer, make_pool: str) -> None:
    """A pool whose servers are all dead raises LDAPServerPoolExhaustedError instead of looping."""
    with blackhole() as hole, running_slapd() as stopped, counting_connects() as counts:
        stopped.stop()  # its port now refuses
        connguard.install(**SETTINGS)
        servers = [dead_server(hole), ldap3.Server(stopped.url)]
        if make_pool == "list":
            pool: Any = servers
        else:
            name = make_pool.removeprefix("ServerPool(").removesuffix(")")
            pool = ldap3.ServerPool(servers, getattr(ldap3, name), active=True, exhaust=False)
        # First contact: each server probed once (one deadline), then no 10 s sleep.
        elapsed, error = try_bind(pool, slapd.user_dn, slapd.user_password)
        assert isinstance(error, LDAPServerPoolExhaustedError)
        assert elapsed < 2 * DEADLINE + 2.0
        assert "connguard" in str(error)
        assert f"127.0.0.1:{hole.port}" in str(error)
        learned = sum(counts.values())
        elapsed, error = try_bind(pool, slapd.user_dn, slapd.user_password)
        assert isinstance(error, LDAPServerPoolExhaustedError)
        assert elapsed < FAST
        assert sum(counts.values()) == learned


def test_recovery_when_the_dead_server_comes_back(slapd: SlapdServer) -> None:
    """A dead directory server that starts again is bound to after its recovery trial."""
    with running_slapd() as revived, counting_connects() as counts:
        revived.stop()
        endpoint = ("127.0.0.1", revived.port)
        connguard.install(**{**SETTINGS, "open_seconds": 0.3, "max_open_seconds": 1.0})
        _, error = try_bind(ldap3.Server(revived.url), revived.user_dn, revived.user_password)
        assert isinstance(error, LDAPSocketOpenError)
        _, error = try_bind(ldap3.Server(revived.url), revived.user_dn, revived.user_password)
        assert isinstance(error, connguard.EndpointUnavailable)
        assert counts[endpoint] == 1
        revived.start()
        assert revived.port == endpoint[1]
        deadline = time.monotonic() + 5.0
        while True:  # bounded: the circuit allows a trial after at most 0.36 s
            _, error = try_bind(ldap3.Server(revived.url), revived.user_dn, revived.user_password)
            if error is None or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert error is None
        (record,) = [r for r in connguard.status() if r["endpoint"] == f"127.0.0.1:{endpoint[1]}"]
        assert record["state"] == "closed"


def test_bind_credentials_never_in_logs_status_or_errors(
    slapd: SlapdServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The bind password appears in no log record, status() entry or exception message."""
    password = "S3cret-never-logged-7f2a"
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []
    with blackhole() as hole:
        connguard.install(**SETTINGS, log_level="DEBUG")
        for _ in range(2):  # deadline failure, then fast failure
            _, error = try_bind(dead_server(hole), slapd.user_dn, password)
            assert error is not None
            errors.append(error)
        pool = ldap3.ServerPool([dead_server(hole)], ldap3.ROUND_ROBIN, active=True)
        _, error = try_bind(pool, slapd.user_dn, password)
        assert isinstance(error, LDAPServerPoolExhaustedError)
        errors.append(error)
        _, error = try_bind(ldap3.Server(slapd.url), slapd.user_dn, password)  # wrong password
        assert error is not None
        texts = [json.dumps(connguard.status())]
    for error in errors:
        chained: BaseException | None = error
        while chained is not None:
            texts += [str(chained), repr(chained), repr(chained.args)]
            chained = chained.__cause__ or chained.__context__
    assert any("connguard" in record.name for record in caplog.records)
    texts += [caplog.text] + [record.getMessage() for record in caplog.records]
    assert not [text for text in texts if password in text]


def test_without_socket_integration_ldap3_admits_itself(slapd: SlapdServer) -> None:
    """With only the ldap3 integration, dead servers still fail fast and healthy binds count."""
    with blackhole() as hole, counting_connects() as counts:
        connguard.install(**{**SETTINGS, "integrations": "ldap3"})
        # No socket wrapper, so no deadline: the Server's own timeout bounds this one.
        elapsed, error = try_bind(
            dead_server(hole, connect_timeout=DEADLINE), slapd.user_dn, slapd.user_password
        )
        assert isinstance(error, LDAPSocketOpenError)
        elapsed, error = try_bind(dead_server(hole), slapd.user_dn, slapd.user_password)
        assert isinstance(error, connguard.EndpointUnavailable)
        assert elapsed < FAST
        assert counts[hole.address] == 1
        assert try_bind(ldap3.Server(slapd.url), slapd.user_dn, slapd.user_password)[1] is None
        records = {r["endpoint"]: r for r in connguard.status()}
        assert records[f"127.0.0.1:{slapd.port}"]["successes"] == 1
        assert records[f"127.0.0.1:{hole.port}"]["state"] == "open"


def test_observe_mode_never_fails_fast(slapd: SlapdServer) -> None:
    """In observe mode a known-dead server is still tried: connguard changes nothing."""
    with blackhole() as hole, counting_connects() as counts:
        connguard.install(**{**SETTINGS, "mode": "observe"})
        for _ in range(2):
            _, error = try_bind(
                dead_server(hole, connect_timeout=0.2), slapd.user_dn, slapd.user_password
            )
            assert isinstance(error, LDAPSocketOpenError)
            assert not isinstance(error, connguard.EndpointUnavailable)
        assert counts[hole.address] == 2


def test_uninstall_restores_ldap3() -> None:
    """uninstall() puts back ldap3's own functions."""
    from ldap3.core.pooling import ServerPoolState
    from ldap3.strategy.base import BaseStrategy

    originals = (vars(BaseStrategy)["_open_socket"], vars(ServerPoolState)["find_active_server"])
    connguard.install(**SETTINGS)
    assert isinstance(vars(BaseStrategy)["_open_socket"], wrapt.FunctionWrapper)
    assert isinstance(vars(ldap3.Server)["check_availability"], wrapt.FunctionWrapper)
    connguard.uninstall()
    assert vars(BaseStrategy)["_open_socket"] is originals[0]
    assert vars(ServerPoolState)["find_active_server"] is originals[1]


def test_ldap3_imported_after_install_is_patched() -> None:
    """An ldap3 first imported after install() is patched by the post-import hook."""
    code = (
        "import warnings; warnings.simplefilter('ignore', DeprecationWarning)\n"
        "import connguard, wrapt\n"
        "connguard.install(integrations='socket,ldap3')\n"
        "import ldap3\n"
        "from ldap3.strategy.base import BaseStrategy\n"
        "print(isinstance(vars(BaseStrategy)['_open_socket'], wrapt.FunctionWrapper))\n"
        "connguard.uninstall()\n"
        "print(isinstance(vars(BaseStrategy)['_open_socket'], wrapt.FunctionWrapper))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False"]
