"""Tests of connguard.testing against real loopback sockets."""

from __future__ import annotations

import asyncio
import asyncio.selector_events
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import wrapt
from _helpers import wait_for

import connguard
from connguard.testing import (
    SYN_SENT,
    SerializedHost,
    blackhole,
    http_server,
    serialized_host,
    tcp_server,
    tcp_state,
    udp_echo_server,
)

# These tests use refused loopback ports as dead endpoints (see conftest).
pytestmark = pytest.mark.usefixtures("every_failure_counts")

# How long a blackhole connect holds the slot in these tests.
HOLD = 1.0


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def _hold_slot(address: tuple[str, int], seconds: float) -> threading.Thread:
    """Start a thread whose blocking connect to a blackhole times out after `seconds`."""

    def run() -> None:
        with socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET) as s:
            s.settimeout(seconds)
            with pytest.raises(TimeoutError):
                s.connect(address)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def held_slot() -> Iterator[tuple[SerializedHost, threading.Thread]]:
    """A one-slot host whose slot a thread holds for HOLD seconds via a blackhole."""
    with serialized_host(slots=1) as host, blackhole() as dead:
        thread = _hold_slot(dead.address, HOLD)
        wait_for(lambda: host.in_flight() == 1)
        yield host, thread
        thread.join(HOLD + 5)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_blackhole_leaves_connect_in_syn_sent(host: str) -> None:
    """A connect to a blackhole sits in SYN_SENT and a timed connect raises TimeoutError."""
    if host == "::1" and not _has_ipv6():
        pytest.skip("no IPv6 loopback")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with blackhole(host) as dead:
        assert dead.address == (host, dead.port)
        with socket.socket(family) as client:
            client.setblocking(False)
            client.connect_ex(dead.address)
            time.sleep(0.05)
            assert tcp_state(client) == SYN_SENT
        with socket.socket(family) as client:
            client.settimeout(0.2)
            start = time.monotonic()
            with pytest.raises(TimeoutError):
                client.connect(dead.address)
            assert time.monotonic() - start >= 0.15
            assert tcp_state(client) == SYN_SENT


def test_blackhole_closes_its_sockets_on_exit() -> None:
    """After the block the port no longer listens, so a connect is refused."""
    with blackhole() as dead:
        address = dead.address
    with socket.socket() as client:
        client.settimeout(1.0)
        with pytest.raises(ConnectionRefusedError):
            client.connect(address)


def test_second_connect_waits_behind_blackhole(
    held_slot: tuple[SerializedHost, threading.Thread],
) -> None:
    """With one slot, a connect to a live server waits until the blackhole connect times out."""
    host, _ = held_slot
    with tcp_server() as live, socket.socket() as client:
        client.settimeout(5.0)
        start = time.monotonic()
        client.connect(live.address)
        waited = time.monotonic() - start
    assert waited > 0.5
    assert host.waits == 1
    assert host.max_waited > 0.5
    assert host.wait_times == [host.max_waited]


def test_no_wait_without_emulator() -> None:
    """Without serialized_host a live connect does not wait behind a blackhole connect."""
    with blackhole() as dead, tcp_server() as live:
        thread = _hold_slot(dead.address, 0.5)
        time.sleep(0.05)
        with socket.socket() as client:
            client.settimeout(5.0)
            start = time.monotonic()
            client.connect(live.address)
            assert time.monotonic() - start < 0.2
        thread.join(5)


def test_caller_timeout_shorter_than_wait_raises(
    held_slot: tuple[SerializedHost, threading.Thread],
) -> None:
    """A caller timeout ending during the wait raises TimeoutError (connect_ex: EAGAIN)."""
    host, _ = held_slot
    with tcp_server() as live:
        with socket.socket() as client:
            client.settimeout(0.2)
            start = time.monotonic()
            with pytest.raises(TimeoutError, match="timed out"):
                client.connect(live.address)
            assert 0.15 < time.monotonic() - start < 0.6
        with socket.socket() as client:
            client.settimeout(0.1)
            assert client.connect_ex(live.address) == 11  # EAGAIN, like a real timeout
        assert live.accepted == 0
    assert host.waits == 2


def test_asyncio_waits_without_freezing_loop(
    held_slot: tuple[SerializedHost, threading.Thread],
) -> None:
    """asyncio.open_connection waits for the slot while other coroutines keep running."""
    host, _ = held_slot

    async def main(address: tuple[str, int]) -> tuple[float, int]:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        tick_task = asyncio.create_task(ticker())
        start = time.monotonic()
        _, writer = await asyncio.wait_for(asyncio.open_connection(*address), 5.0)
        waited = time.monotonic() - start
        writer.close()
        await writer.wait_closed()
        done.set()
        await tick_task
        return waited, ticks

    with tcp_server() as live:
        waited, ticks = asyncio.run(main(live.address))
    assert waited > 0.5
    assert ticks > 20
    assert host.waits == 1


def test_asyncio_wait_is_cancellable(
    held_slot: tuple[SerializedHost, threading.Thread],
) -> None:
    """An asyncio timeout cancels a connect waiting for the slot and frees its reservation."""
    host, _ = held_slot

    async def main(address: tuple[str, int]) -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.open_connection(*address), 0.1)

    with tcp_server() as live:
        asyncio.run(main(live.address))
    assert host.in_flight() == 1  # only the blackhole connect


def test_two_slots_admit_two_dead_connects() -> None:
    """With two slots, two blackhole connects are admitted at once and a third connect waits."""
    with serialized_host(slots=2) as host, blackhole() as dead, tcp_server() as live:
        threads = [_hold_slot(dead.address, HOLD) for _ in range(2)]
        wait_for(lambda: host.in_flight() == 2)
        assert host.waits == 0
        with socket.socket() as client:
            client.settimeout(5.0)
            start = time.monotonic()
            client.connect(live.address)
            assert time.monotonic() - start > 0.5
        for thread in threads:
            thread.join(HOLD + 5)
    assert host.waits == 1


def test_closing_a_syn_sent_socket_frees_the_slot() -> None:
    """A timed-out connect holds the slot until its socket is closed."""
    with serialized_host(slots=1) as host, blackhole() as dead:
        client = socket.socket()
        client.settimeout(0.1)
        with pytest.raises(TimeoutError):
            client.connect(dead.address)
        assert host.in_flight() == 1
        client.close()
        assert host.in_flight() == 0


def test_restore_leaves_socket_methods_as_before() -> None:
    """Leaving the block deletes the shadowing attributes and restores sock_connect."""
    loop_cls = asyncio.selector_events.BaseSelectorEventLoop
    before = loop_cls.__dict__["sock_connect"]
    assert "connect" not in socket.socket.__dict__
    with serialized_host():
        assert "connect" in socket.socket.__dict__
        assert "connect_ex" in socket.socket.__dict__
        assert loop_cls.__dict__["sock_connect"] is not before
    assert "connect" not in socket.socket.__dict__
    assert "connect_ex" not in socket.socket.__dict__
    assert loop_cls.__dict__["sock_connect"] is before


def test_nests_beneath_a_later_wrapper() -> None:
    """A wrapper installed on top (as connguard does) runs above the emulator and unwraps."""
    calls: list[str] = []

    def outer(wrapped, instance, args, kwargs):  # type: ignore[no-untyped-def]
        calls.append("outer")
        return wrapped(*args, **kwargs)

    with serialized_host() as host, tcp_server() as live:
        inner = socket.socket.__dict__["connect"]
        handle = wrapt.wrap_object(socket.socket, "connect", wrapt.FunctionWrapper, (outer,), {})
        with socket.socket() as client:
            client.settimeout(2.0)
            client.connect(live.address)
        # The top layer restores what it found, as connguard.uninstall() does.
        socket.socket.connect = inner  # type: ignore[method-assign]
        assert socket.socket.__dict__["connect"] is not handle
    assert calls == ["outer"]
    assert host.connects == 1
    assert "connect" not in socket.socket.__dict__


def test_exit_with_foreign_wrapper_on_top_disables_emulator() -> None:
    """If something still wraps connect at exit, the emulator stays but lets connects through."""
    with serialized_host() as host:
        foreign = wrapt.wrap_object(
            socket.socket, "connect", wrapt.FunctionWrapper, (lambda w, i, a, k: w(*a, **k),), {}
        )
    try:
        assert socket.socket.__dict__["connect"] is foreign
        with blackhole() as dead, tcp_server() as live, socket.socket() as stuck:
            stuck.settimeout(0.1)
            with pytest.raises(TimeoutError):
                stuck.connect(dead.address)
            with socket.socket() as client:
                client.settimeout(2.0)
                client.connect(live.address)
        assert host.waits == 0
    finally:
        del socket.socket.connect


def test_http_server_answers_httpx() -> None:
    """http_server answers GETs with 200 ok over one keep-alive connection."""
    with http_server() as server:
        with httpx.Client(trust_env=False) as client:
            for _ in range(3):
                response = client.get(server.url)
                assert response.status_code == 200
                assert response.text == "ok"
        assert server.requests == 3
        assert server.connections == 1
    assert server.url.startswith("http://127.0.0.1:")


def test_http_server_stops_with_open_keepalive_connection() -> None:
    """Leaving http_server returns promptly even while a client keeps a connection open."""
    client = httpx.Client(trust_env=False)
    try:
        start = time.monotonic()
        with http_server() as server:
            assert client.get(server.url).status_code == 200
        assert time.monotonic() - start < 2.0
    finally:
        client.close()


def test_udp_echo_server_echoes() -> None:
    """udp_echo_server sends each datagram back to its sender."""
    with udp_echo_server() as server, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(2.0)
        client.sendto(b"ping", server.address)
        data, peer = client.recvfrom(100)
        assert data == b"ping"
        assert peer == server.address
        assert server.received == 1


def test_tcp_server_echo_mode_and_accept_count() -> None:
    """tcp_server counts accepted connections and echoes in echo mode."""
    with tcp_server(mode="echo") as server:
        with socket.create_connection(server.address, timeout=2.0) as client:
            client.sendall(b"hello")
            assert client.recv(100) == b"hello"
        wait_for(lambda: server.accepted == 1)


def test_nests_beneath_connguard_install() -> None:
    """connguard installed inside the block wraps on top of the emulator and uninstalls cleanly."""
    with serialized_host() as host, tcp_server() as live:
        ours = socket.socket.__dict__["connect"]
        connguard.install()
        try:
            with socket.create_connection(live.address, timeout=2.0):
                pass
        finally:
            connguard.uninstall()
        assert socket.socket.__dict__["connect"] is ours
    assert host.connects == 1
    assert "connect" not in socket.socket.__dict__
    assert "connect_ex" not in socket.socket.__dict__


def test_unreserved_port_refuses_and_reachable_sees_a_listener() -> None:
    """unreserved_port() refuses at once; reachable() sees it only once something listens."""
    from connguard.testing import reachable, unreserved_port

    port = unreserved_port()
    assert 20000 <= port < 32000
    assert not reachable(("127.0.0.1", port))
    with socket.create_server(("127.0.0.1", port)):
        assert reachable(("127.0.0.1", port), timeout=1.0)
