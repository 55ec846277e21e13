"""Pre-checks (udp-echo, icmp, a callable, first contact) and the background prober."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from _helpers import free_port, wait_for

import connguard
from connguard import _api
from connguard._probe import udp_echo
from connguard.testing import blackhole, tcp_server, udp_echo_server

# These tests use refused loopback ports as dead endpoints (see conftest).
pytestmark = pytest.mark.usefixtures("every_failure_counts")


def _record(host: str, port: int) -> dict[str, object]:
    return {r["endpoint"]: r for r in connguard.status()}[f"{host}:{port}"]


def _prober_thread() -> threading.Thread | None:
    return next((t for t in threading.enumerate() if t.name == "connguard-prober"), None)


@contextlib.contextmanager
def _listener_on(port: int) -> Iterator[list[int]]:
    """A TCP listener on ``port`` that accepts and closes; yields [accepted count]."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(16)
    listener.settimeout(0.05)
    accepted = [0]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            accepted[0] += 1
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield accepted
    finally:
        stop.set()
        thread.join(2)
        listener.close()


# -- the checks themselves --------------------------------------------------------------


def test_udp_echo_succeeds_when_a_responder_answers() -> None:
    """udp-echo is True when the echo server sends the datagram back."""
    with udp_echo_server() as echo:
        assert udp_echo("127.0.0.1", echo.port, 1.0) is True
        assert echo.received >= 1


def test_udp_echo_fails_fast_without_a_responder() -> None:
    """udp-echo to a port with no responder is False (ICMP port unreachable), quickly."""
    started = time.monotonic()
    assert udp_echo("127.0.0.1", free_port(socket.SOCK_DGRAM), 1.0) is False
    assert time.monotonic() - started < 0.5


def _icmp_allowed() -> bool:
    try:
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP).close()
    except OSError:
        return False
    return True


@pytest.mark.skipif(_icmp_allowed(), reason="this host allows unprivileged ICMP sockets")
def test_icmp_precheck_is_refused_at_install_where_the_os_forbids_it() -> None:
    """CONNGUARD_PRECHECK=icmp raises ConfigError at install() naming ping_group_range."""
    with pytest.raises(connguard.ConfigError, match="ping_group_range") as caught:
        connguard.install(environ={"CONNGUARD_PRECHECK": "icmp"})
    assert "CONNGUARD_PRECHECK=icmp" in str(caught.value)
    assert not connguard.is_installed()


@pytest.mark.skipif(_icmp_allowed(), reason="this host allows unprivileged ICMP sockets")
def test_icmp_override_is_refused_at_install_too() -> None:
    """A per-endpoint precheck=icmp override is checked at install() as well."""
    with pytest.raises(connguard.ConfigError, match="icmp"):
        connguard.install(environ={"CONNGUARD_OVERRIDES": "10.0.0.5:80 precheck=icmp"})


@pytest.mark.root
@pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0 or shutil.which("ip") is None,
    reason="needs root and iproute2 to create a network namespace with ICMP sockets allowed",
)
def test_icmp_echo_works_where_ping_group_range_allows_it() -> None:
    """In a namespace of our own with ping_group_range widened, icmp succeeds and install works."""
    namespace = f"cg-icmp-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        run = ["ip", "netns", "exec", namespace]
        subprocess.run([*run, "ip", "link", "set", "lo", "up"], check=True)
        subprocess.run(
            [*run, "sysctl", "-q", "-w", "net.ipv4.ping_group_range=0 2147483647"], check=True
        )
        code = (
            "import connguard\n"
            "from connguard._probe import icmp_echo\n"
            "assert icmp_echo('127.0.0.1', 1.0) is True\n"
            "assert connguard.install(environ={'CONNGUARD_PRECHECK': 'icmp'})\n"
            "print('ok')\n"
        )
        done = subprocess.run(
            [*run, sys.executable, "-c", code], capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "ok"
    finally:
        subprocess.run(["ip", "netns", "delete", namespace], check=False)


# -- first contact ----------------------------------------------------------------------


def test_udp_echo_first_contact_without_responder_sends_no_syn() -> None:
    """No echo responder: the first connect fails fast and no SYN ever reaches the endpoint."""
    with tcp_server() as endpoint:
        connguard.install(
            environ={
                "CONNGUARD_PRECHECK": f"udp-echo:{free_port(socket.SOCK_DGRAM)}",
                "CONNGUARD_PRECHECK_FIRST_CONTACT": "1",
            },
            open_seconds=0.2,
            max_open_seconds=0.4,
        )
        with socket.socket() as sock, pytest.raises(connguard.EndpointUnavailable) as caught:
            sock.connect(endpoint.address)
        assert "no SYN" in str(caught.value)
        for _ in range(2):
            with socket.socket() as sock, pytest.raises(connguard.EndpointUnavailable):
                sock.connect(endpoint.address)
        time.sleep(1.0)  # the prober re-checks with udp-echo meanwhile, never with a SYN
        assert _record(*endpoint.address)["state"] in ("open", "half-open")
        assert endpoint.accepted == 0
        prober = connguard.lane_status()["prober"]  # type: ignore[index]
        assert prober["probes"] >= 1


def test_first_contact_to_a_blackhole_leaves_no_syn_sent_socket() -> None:
    """Against a blackhole, a failed pre-check means no socket ever sits in SYN_SENT."""
    udp = free_port(socket.SOCK_DGRAM)
    with blackhole() as dead:
        connguard.install(
            environ={"CONNGUARD_OVERRIDES": f"127.0.0.1:{dead.port} precheck=udp-echo:{udp}"},
            precheck_first_contact=True,
        )
        with socket.socket() as sock:
            started = time.monotonic()
            with pytest.raises(connguard.EndpointUnavailable):
                sock.connect(dead.address)
            assert time.monotonic() - started < 0.5
            state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
            assert state == 7  # TCP_CLOSE: the connect never started


def test_udp_echo_first_contact_with_responder_connects() -> None:
    """With an echo responder answering, the first connect goes ahead normally."""
    with tcp_server() as endpoint, udp_echo_server() as echo:
        connguard.install(environ={}, precheck=f"udp-echo:{echo.port}", precheck_first_contact=True)
        with socket.create_connection(endpoint.address, timeout=2):
            pass
        assert echo.received >= 1
        wait_for(lambda: endpoint.accepted == 1)


def test_callable_precheck_from_install() -> None:
    """install(precheck=fn) calls fn(host, port, timeout); False opens the circuit with no SYN."""
    calls: list[tuple[str, int, float]] = []

    def reachable(host: str, port: int, timeout: float) -> bool:
        calls.append((host, port, timeout))
        return False

    with tcp_server() as endpoint:
        connguard.install(environ={}, precheck=reachable, precheck_first_contact=True)
        with socket.socket() as sock, pytest.raises(connguard.EndpointUnavailable):
            sock.connect(endpoint.address)
        assert calls[0][:2] == endpoint.address
        assert 0 < calls[0][2] <= 5
        assert endpoint.accepted == 0


# -- the prober -------------------------------------------------------------------------


def test_prober_closes_the_circuit_when_the_endpoint_comes_back() -> None:
    """After the endpoint returns, the prober closes the circuit; callers never see a failure."""
    port = free_port()
    connguard.install(environ={}, open_seconds=0.2, max_open_seconds=0.4)
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        sock.connect(("127.0.0.1", port))
    assert _record("127.0.0.1", port)["state"] == "open"
    guard = _api.current_guard()
    assert guard is not None
    assert guard.callers_may_trial is False  # the prober owns recovery
    thread = _prober_thread()
    assert thread is not None
    assert thread.is_alive()
    with _listener_on(port) as accepted:
        wait_for(lambda: _record("127.0.0.1", port)["state"] == "closed")
        # The probe's connect completes in the kernel before the accept loop counts it.
        wait_for(lambda: accepted[0] >= 1)
        probes = accepted[0]
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
        wait_for(lambda: accepted[0] == probes + 1)
    assert probes >= 1  # the tcp probe connect itself
    status = connguard.lane_status()
    assert status is not None
    assert status["prober"]["recoveries"] == 1  # type: ignore[index]


def test_callers_fail_fast_instead_of_trialling_while_the_prober_runs() -> None:
    """Past the wait, a caller still fails fast: the recovery check is the prober's job."""
    port = free_port()
    connguard.install(environ={}, precheck="none", open_seconds=30, max_open_seconds=60)
    guard = _api.current_guard()
    assert guard is not None
    # precheck none everywhere: no prober, callers trial as without one.
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        sock.connect(("127.0.0.1", port))
    assert _prober_thread() is None
    assert guard.callers_may_trial is True
    connguard.uninstall()
    with udp_echo_server() as echo:
        connguard.install(
            environ={}, precheck=f"udp-echo:{free_port(socket.SOCK_DGRAM)}", open_seconds=0.2
        )
        with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
            sock.connect(("127.0.0.1", port))
        time.sleep(0.5)  # past the wait: a caller would have been the trial
        with socket.socket() as sock, pytest.raises(connguard.EndpointUnavailable):
            sock.connect(("127.0.0.1", port))
        assert echo.received == 0


def test_prober_with_udp_echo_closes_when_the_responder_returns() -> None:
    """The prober's udp-echo checks close the circuit once the responder answers."""
    udp_port = free_port(socket.SOCK_DGRAM)
    with tcp_server() as endpoint:
        connguard.install(
            environ={},
            precheck=f"udp-echo:{udp_port}",
            precheck_first_contact=True,
            open_seconds=0.2,
            max_open_seconds=0.4,
        )
        with socket.socket() as sock, pytest.raises(connguard.EndpointUnavailable):
            sock.connect(endpoint.address)
        with udp_echo_server(port=udp_port):
            wait_for(lambda: _record(*endpoint.address)["state"] == "closed")
        assert endpoint.accepted == 0  # recovery was checked without a SYN
        with socket.create_connection(endpoint.address, timeout=2):
            pass
        wait_for(lambda: endpoint.accepted == 1)


def test_uninstall_stops_the_prober() -> None:
    """uninstall() stops the prober thread and gives recovery back to callers."""
    connguard.install(environ={}, open_seconds=0.2)
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        sock.connect(("127.0.0.1", free_port()))
    thread = _prober_thread()
    assert thread is not None
    guard = _api.current_guard()
    connguard.uninstall()
    assert not thread.is_alive()
    assert guard is not None
    assert guard.callers_may_trial is True


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_prober_restarts_after_fork() -> None:
    """A forked child with an open circuit gets its own prober thread."""
    connguard.install(environ={}, open_seconds=0.2)
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        sock.connect(("127.0.0.1", free_port()))
    assert _prober_thread() is not None
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        ok = False
        try:
            ok = _prober_thread() is not None and _api._state.prober.running
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_probe_gives_way_to_a_held_connect_without_the_lane() -> None:
    """On a serializing host without the lane, a tcp probe is aborted when a caller waits.

    The same scenario with the probe holding the slot makes each caller wait up
    to the probe's 2 s timeout.
    """
    from connguard.testing import serialized_host

    with serialized_host(1), blackhole() as dead, tcp_server() as live:
        connguard.install(
            environ={},
            connect_timeout=2.0,
            min_connect_timeout=1.5,
            open_seconds=0.2,
            max_open_seconds=0.2,
        )
        try:
            with pytest.raises(TimeoutError):
                socket.create_connection(dead.address)  # one deadline; the circuit opens
            guard = _api.current_guard()
            assert guard is not None
            waits = []
            deadline = time.monotonic() + 8
            while guard.watchdog.yielded < 2 and time.monotonic() < deadline:
                time.sleep(0.25)  # let a probe start and hold the slot
                started = time.monotonic()
                socket.create_connection(live.address, timeout=5).close()
                waits.append(time.monotonic() - started)
            assert guard.watchdog.yielded >= 2
            assert max(waits) < 0.5
            assert _record("127.0.0.1", dead.port)["state"] in ("open", "half-open")
        finally:
            connguard.uninstall()
