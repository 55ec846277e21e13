"""socket.connect and connect_ex under install(), against real loopback peers."""

from __future__ import annotations

import _socket
import contextlib
import errno
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from typing import Any

import pytest
import wrapt
from _helpers import free_port

import connguard
from connguard import ConnectDeadlineExceeded, EndpointUnavailable
from connguard._api import current_guard
from connguard.testing import SYN_SENT, blackhole, tcp_server, tcp_state

# These tests use refused loopback ports as dead endpoints (see conftest).
pytestmark = pytest.mark.usefixtures("every_failure_counts")

FAST = {"connect_timeout": 0.5, "min_connect_timeout": 0.2, "open_seconds": 0.3}


@contextmanager
def listener(host: str = "127.0.0.1", port: int = 0) -> Iterator[socket.socket]:
    """A listening socket that is never accepted from (the backlog is enough)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(64)
    with closing(sock):
        yield sock


def connect(address: tuple[str, int], timeout: float | None = None) -> None:
    with closing(socket.socket()) as sock:
        sock.settimeout(timeout)
        sock.connect(address)


def record(endpoint: str) -> dict[str, Any]:
    (found,) = [r for r in connguard.status() if r["endpoint"] == endpoint]
    return found


def test_live_endpoint_connects_and_is_tracked() -> None:
    """A healthy connect goes through and its connect time is recorded."""
    connguard.install(environ={})
    with tcp_server() as server:
        for _ in range(3):
            connect(server.address)
        label = f"127.0.0.1:{server.port}"
        assert record(label)["successes"] == 3
        assert record(label)["state"] == "closed"
        assert json.loads(json.dumps(connguard.status())) == connguard.status()


@pytest.mark.parametrize("timeout", [None, 30.0, 0.25])
def test_socket_timeout_is_restored(timeout: float | None) -> None:
    """The socket's own timeout is unchanged after a guarded connect."""
    connguard.install(environ={})
    with tcp_server() as server, closing(socket.socket()) as sock:
        sock.settimeout(timeout)
        sock.connect(server.address)
        assert sock.gettimeout() == timeout


def test_blackhole_fails_at_deadline_then_fast() -> None:
    """A dead endpoint costs one deadline (not the OS's ~130 s), then fails fast."""
    connguard.install(environ={}, **FAST)
    with blackhole() as dead, closing(socket.socket()) as sock:
        started = time.monotonic()
        with pytest.raises(ConnectDeadlineExceeded) as info:
            sock.connect(dead.address)
        assert 0.4 < time.monotonic() - started < 3.0
        assert info.value.deadline == 0.5
        assert sock.gettimeout() is None  # restored
        assert tcp_state(sock) != SYN_SENT  # the SYN was aborted: no half-open slot left
        started = time.monotonic()
        with pytest.raises(EndpointUnavailable) as fast:
            connect(dead.address)
        assert time.monotonic() - started < 0.1
        assert fast.value.endpoint == f"127.0.0.1:{dead.port}"
        assert 0 < (fast.value.retry_after or 0) <= 0.3 * 1.2


def test_callers_shorter_timeout_wins() -> None:
    """A caller's timeout shorter than the deadline applies, with the caller's own error."""
    connguard.install(environ={}, connect_timeout=3.0)
    with blackhole() as dead, closing(socket.socket()) as sock:
        sock.settimeout(0.2)
        started = time.monotonic()
        with pytest.raises(TimeoutError) as info:
            sock.connect(dead.address)
        assert not isinstance(info.value, ConnectDeadlineExceeded)
        assert time.monotonic() - started < 1.5
        assert sock.gettimeout() == 0.2


def test_refused_endpoint_opens_after_threshold() -> None:
    """A known-good endpoint that starts refusing opens after the threshold."""
    connguard.install(environ={}, failure_threshold=3, open_seconds=30)
    port = free_port()
    with listener(port=port):
        connect(("127.0.0.1", port))
    for _ in range(3):
        with pytest.raises(ConnectionRefusedError) as info:
            connect(("127.0.0.1", port))
        assert not isinstance(info.value, EndpointUnavailable)
    with pytest.raises(EndpointUnavailable):
        connect(("127.0.0.1", port))
    assert record(f"127.0.0.1:{port}")["state"] == "open"


def test_open_endpoint_sends_no_syn() -> None:
    """While open, connect and connect_ex refuse without reaching the listener."""
    connguard.install(environ={}, open_seconds=30)
    port = free_port()
    with pytest.raises(ConnectionRefusedError):
        connect(("127.0.0.1", port))  # never connected: opens on the first failure
    with listener(port=port) as sock:
        with closing(socket.socket()) as client:
            assert client.connect_ex(("127.0.0.1", port)) == errno.ECONNREFUSED
        with pytest.raises(EndpointUnavailable):
            connect(("127.0.0.1", port))
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.accept()  # nothing reached the listener


def test_recovery_allows_exactly_one_trial_among_concurrent_callers() -> None:
    """After the wait, one of many concurrent callers tries; the rest fail fast."""
    connguard.install(environ={}, open_seconds=0.3, max_open_seconds=0.3)
    port = free_port()
    with pytest.raises(ConnectionRefusedError):
        connect(("127.0.0.1", port))
    with listener(port=port):
        time.sleep(0.45)  # past the jittered wait (at most 0.36 s)
        barrier = threading.Barrier(12)
        outcomes: list[str] = []

        def caller() -> None:
            barrier.wait()
            try:
                connect(("127.0.0.1", port))
                outcomes.append("connected")
            except EndpointUnavailable:
                outcomes.append("fast")

        threads = [threading.Thread(target=caller) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert outcomes.count("connected") >= 1
        # Exactly one trial; callers arriving after it closed the circuit may connect too,
        # but no caller may connect while the circuit was still open and the trial in flight.
        assert record(f"127.0.0.1:{port}")["state"] == "closed"
        assert record(f"127.0.0.1:{port}")["fast_failures"] + outcomes.count("connected") == 12


def test_create_connection_moves_past_known_dead_address(monkeypatch: pytest.MonkeyPatch) -> None:
    """A name resolving to a dead and a live address connects through the live one at once.

    No DNS server can be run here, so the resolver alone is replaced to return
    127.0.0.2 (blackholed) then 127.0.0.3 (live); every connect is real.
    """
    with blackhole("127.0.0.2") as dead, listener("127.0.0.3", dead.port):
        real_getaddrinfo = socket.getaddrinfo

        def two_addresses(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
            if host != "dual.test":
                return real_getaddrinfo(host, port, *args, **kwargs)
            return [
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", port)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.3", port)),
            ]

        monkeypatch.setattr(socket, "getaddrinfo", two_addresses)
        connguard.install(environ={}, **FAST)
        first = time.monotonic()
        socket.create_connection(("dual.test", dead.port)).close()  # pays one deadline
        first = time.monotonic() - first
        second = time.monotonic()
        socket.create_connection(("dual.test", dead.port)).close()
        second = time.monotonic() - second
        assert 0.4 < first < 3.0
        assert second < 0.1
        assert record(f"127.0.0.2:{dead.port}")["state"] == "open"


def test_udp_unix_and_excluded_pass_through() -> None:
    """UDP, AF_UNIX and excluded endpoints are never guarded."""
    port = free_port()
    connguard.install(environ={"CONNGUARD_EXCLUDE": f"127.0.0.1:{port + 1 if port < 65535 else 1}"})
    with closing(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) as udp:
        udp.connect(("127.0.0.1", port))
    left, right = socket.socketpair()
    left.close()
    right.close()
    excluded = ("127.0.0.1", port + 1 if port < 65535 else 1)
    for _ in range(3):
        with pytest.raises(ConnectionRefusedError) as info:
            connect(excluded)
        assert not isinstance(info.value, EndpointUnavailable)
    assert connguard.status() == []


def test_nonblocking_connect_is_never_an_outcome() -> None:
    """BlockingIOError passes through untouched and does not count as a failure."""
    connguard.install(environ={})
    with blackhole() as dead:
        for _ in range(3):
            with closing(socket.socket()) as sock:
                sock.setblocking(False)
                with pytest.raises(BlockingIOError):
                    sock.connect(dead.address)
                assert sock.gettimeout() == 0.0
                assert sock.connect_ex(dead.address) in (errno.EALREADY, errno.EINPROGRESS)
        assert record(f"127.0.0.1:{dead.port}")["state"] == "closed"


def test_nonblocking_connect_fails_fast_when_open() -> None:
    """A non-blocking connect to an open endpoint fails fast too."""
    connguard.install(environ={}, open_seconds=30)
    port = free_port()
    with pytest.raises(ConnectionRefusedError):
        connect(("127.0.0.1", port))
    with closing(socket.socket()) as sock:
        sock.setblocking(False)
        with pytest.raises(EndpointUnavailable):
            sock.connect(("127.0.0.1", port))


def test_connect_ex_reports_deadline_as_errno() -> None:
    """connect_ex returns ETIMEDOUT, as at the OS's own timeout, when connguard's deadline ends."""
    connguard.install(environ={}, **FAST)
    with blackhole() as dead, closing(socket.socket()) as sock:
        assert sock.connect_ex(dead.address) == errno.ETIMEDOUT
        assert sock.gettimeout() is None
        assert record(f"127.0.0.1:{dead.port}")["state"] == "open"
        with closing(socket.socket()) as again:
            assert again.connect_ex(dead.address) == errno.ECONNREFUSED


def test_uninstall_restores_attributes_exactly() -> None:
    """After uninstall() the inherited C methods are visible again, untouched."""
    before = dict(vars(socket.socket))
    assert connguard.install(environ={}) is True
    assert connguard.install(environ={}) is False  # idempotent
    assert connguard.is_installed()
    assert "connect" in vars(socket.socket)
    connguard.uninstall()
    connguard.uninstall()  # safe twice
    assert not connguard.is_installed()
    assert dict(vars(socket.socket)) == before
    assert socket.socket.connect is _socket.socket.connect
    assert socket.socket.connect_ex is _socket.socket.connect_ex


def test_uninstall_leaves_another_instrumenter_in_place() -> None:
    """An instrumenter wrapped on top keeps working; connguard splices itself out."""
    calls: list[str] = []

    def spy(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        calls.append("spy")
        return wrapped(*args, **kwargs)

    connguard.install(environ={}, open_seconds=30)
    wrapt.wrap_object(socket.socket, "connect", wrapt.FunctionWrapper, (spy,), {})
    try:
        port = free_port()
        with pytest.raises(ConnectionRefusedError):
            connect(("127.0.0.1", port))
        with pytest.raises(EndpointUnavailable):
            connect(("127.0.0.1", port))
        connguard.uninstall()
        with pytest.raises(ConnectionRefusedError) as info:
            connect(("127.0.0.1", port))
        assert not isinstance(info.value, EndpointUnavailable)
        assert calls == ["spy"] * 3
    finally:
        del socket.socket.connect
    assert socket.socket.connect is _socket.socket.connect


def test_disabled_install_is_a_no_op() -> None:
    """CONNGUARD_ENABLED=0 makes install() do nothing."""
    assert connguard.install(environ={"CONNGUARD_ENABLED": "0"}) is False
    assert not connguard.is_installed()
    assert "connect" not in vars(socket.socket)


def test_observe_mode_blocks_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """Observe mode logs what it would block and lets the connect happen."""
    connguard.install(environ={"CONNGUARD_MODE": "observe"})
    port = free_port()
    with caplog.at_level(logging.WARNING, logger="connguard"):
        for _ in range(3):
            with pytest.raises(ConnectionRefusedError) as info:
                connect(("127.0.0.1", port))
            assert not isinstance(info.value, EndpointUnavailable)
    assert "would fail fast" in caplog.text


def test_internal_fault_never_breaks_the_connect(caplog: pytest.LogCaptureFixture) -> None:
    """A bug inside connguard's decision lets the plain connect through, logged once."""
    connguard.install(environ={})
    guard = current_guard()
    assert guard is not None

    def broken(key: Any, default: Any = None) -> Any:
        raise RuntimeError("injected fault")

    guard.table.get = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="connguard"), tcp_server() as server:
        connect(server.address)  # raises if the fault leaked into the connect
        connect(server.address)
    assert caplog.text.count("internal error") == 1


def test_reset_forgets_endpoints() -> None:
    """reset() forgets one endpoint or all of them; a bad name is a clear error."""
    connguard.install(environ={}, open_seconds=30)
    port = free_port()
    with pytest.raises(ConnectionRefusedError):
        connect(("127.0.0.1", port))
    connguard.reset(f"127.0.0.1:{port}")
    assert connguard.status() == []
    with pytest.raises(ConnectionRefusedError) as info:
        connect(("127.0.0.1", port))
    assert not isinstance(info.value, EndpointUnavailable)
    connguard.reset()
    assert connguard.status() == []
    with pytest.raises(connguard.ConfigError, match="no-port"):
        connguard.reset("no-port")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_child_after_fork_connects() -> None:
    """A forked child has a working guard (fresh lock) and keeps the parent's knowledge."""
    connguard.install(environ={}, open_seconds=30)
    port = free_port()
    with pytest.raises(ConnectionRefusedError):
        connect(("127.0.0.1", port))
    guard = current_guard()
    assert guard is not None
    with tcp_server() as server:
        guard.table.lock.acquire()  # held by "another thread" at fork time
        try:
            pid = os.fork()
            if pid == 0:  # child: must not deadlock, must still fail fast
                code = 0
                try:
                    connect(server.address)
                    try:
                        connect(("127.0.0.1", port))
                        code = 2
                    except EndpointUnavailable:
                        pass
                except BaseException:
                    code = 1
                os._exit(code)
        finally:
            guard.table.lock.release()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0


def test_connect_held_on_the_host_is_not_cut_by_the_deadline() -> None:
    """A connect queued by a serializing host past its deadline still completes, uncounted.

    Its SYN had not left the host, so the endpoint is not to blame; the watchdog
    counts the deadline again from when it could have left.
    """
    from connguard.testing import serialized_host

    with serialized_host(1), blackhole() as dead, tcp_server() as live:
        connguard.install(
            environ={"CONNGUARD_EXCLUDE": f"127.0.0.1:{dead.port}"},
            connect_timeout=0.5,
            min_connect_timeout=0.5,
        )

        def hold_the_slot() -> None:
            with contextlib.suppress(TimeoutError):
                connect(dead.address, 1.5)

        holder = threading.Thread(target=hold_the_slot)
        holder.start()
        time.sleep(0.1)  # the holder's SYN is out and holds the only slot
        started = time.monotonic()
        connect(live.address)
        waited = time.monotonic() - started
        holder.join(5)
        failures = record(f"127.0.0.1:{live.port}")["failures_total"]
        connguard.uninstall()  # before the emulator leaves, so both unwind in order
        assert waited > 0.9  # it really waited behind the holder, past its 0.5 s deadline
        assert failures == 0


def test_deadline_holds_after_the_watchdog_went_idle() -> None:
    """The watchdog sleeps when nothing is in flight and still wakes for a late connect."""
    connguard.install(environ={}, connect_timeout=0.5, min_connect_timeout=0.5)
    time.sleep(1.3)  # more than the watchdog's idle threshold (1 s of empty polls)
    with blackhole() as dead:
        started = time.monotonic()
        with pytest.raises(ConnectDeadlineExceeded):
            connect(dead.address)
        assert time.monotonic() - started < 2.0
