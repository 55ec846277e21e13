"""asyncio integration: loop.sock_connect per resolved address, and uvloop, on loopback."""

from __future__ import annotations

import asyncio
import asyncio.selector_events
import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import wrapt
from _helpers import free_port

import connguard
from connguard import ConnectDeadlineExceeded, EndpointUnavailable
from connguard.testing import blackhole, tcp_server

# These tests use refused loopback ports as dead endpoints (see conftest).
pytestmark = pytest.mark.usefixtures("every_failure_counts")

try:
    import uvloop
except ImportError:  # an optional dev dependency
    uvloop = None

needs_uvloop = pytest.mark.skipif(uvloop is None, reason="uvloop is not installed")

DEADLINE = 0.5  # connect budget in these tests (the default is 2 s)
FAST = 0.1  # generous bound for "at once" on a noisy 2-core machine
DUAL_NAME = "dual.connguard.test"


def _install(**overrides: Any) -> None:
    settings: dict[str, Any] = {"connect_timeout": DEADLINE, "min_connect_timeout": DEADLINE}
    settings.update(overrides)
    assert connguard.install(environ={}, **settings)


def _status(endpoint: str) -> dict[str, Any]:
    (record,) = [r for r in connguard.status() if r["endpoint"] == endpoint]
    return record


@contextlib.contextmanager
def _listener(host: str, port: int) -> Iterator[socket.socket]:
    """A listening socket: the kernel completes handshakes into its backlog."""
    sock = socket.socket()
    try:
        sock.bind((host, port))
        sock.listen(16)
        yield sock
    finally:
        sock.close()


async def _open(host: str, port: int) -> float:
    """Open and close one asyncio connection; return how long the connect took."""
    started = time.monotonic()
    _, writer = await asyncio.open_connection(host, port)
    elapsed = time.monotonic() - started
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return elapsed


async def _fails(host: str, port: int) -> tuple[BaseException, float]:
    started = time.monotonic()
    try:
        await _open(host, port)
    except OSError as exc:
        return exc, time.monotonic() - started
    raise AssertionError("connect unexpectedly succeeded")


@pytest.fixture
def dual_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resolve DUAL_NAME to 127.0.0.2 then 127.0.0.3 (no /etc/hosts edit).

    This replaces only name resolution, never the network path: the connects
    are real, to the port the caller asks for.
    """
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in (DUAL_NAME, DUAL_NAME.encode()):  # anyio passes IDNA bytes
            return [
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", int(port))),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.3", int(port))),
            ]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_dead_endpoint_bounded_then_fails_fast() -> None:
    """A blackholed connect with no timeout ends at the deadline, then fails at once."""
    _install()
    with blackhole() as dead:
        exc, took = asyncio.run(_fails(*dead.address))
        assert isinstance(exc, ConnectDeadlineExceeded)
        assert DEADLINE * 0.8 < took < DEADLINE + 1.5
        exc, took = asyncio.run(_fails(*dead.address))
        assert isinstance(exc, EndpointUnavailable)
        assert took < FAST
    record = _status(f"127.0.0.1:{dead.port}")
    assert record["state"] == "open"
    assert record["fast_failures"] == 1


def test_live_endpoint_connects_and_is_recorded() -> None:
    """A live endpoint connects normally and its connect time is learnt."""
    _install()
    with tcp_server() as live:
        asyncio.run(_open(*live.address))
        asyncio.run(_open(*live.address))
    record = _status(f"127.0.0.1:{live.port}")
    assert record["state"] == "closed"
    assert record["successes"] == 2
    assert record["srtt"] is not None


def test_callers_shorter_timeout_wins_and_is_no_evidence() -> None:
    """The caller's own shorter timeout cancels the connect, which counts as no failure."""
    _install()

    async def main(address: tuple[str, int]) -> None:
        with pytest.raises(TimeoutError) as info:
            await asyncio.wait_for(_open(*address), 0.1)
        assert not isinstance(info.value, ConnectDeadlineExceeded)

    with blackhole() as dead:
        asyncio.run(main(dead.address))
    record = _status(f"127.0.0.1:{dead.port}")
    assert record["state"] == "closed"
    assert record["failures_total"] == 0


def test_refused_endpoint_opens_and_recovers_through_a_trial() -> None:
    """After a refusal opens the circuit, the recovery trial connects (no double admission)."""
    _install(open_seconds=0.2, max_open_seconds=0.2)
    port = free_port()
    exc, _ = asyncio.run(_fails("127.0.0.1", port))
    assert isinstance(exc, ConnectionRefusedError)
    assert not isinstance(exc, EndpointUnavailable)
    exc, _ = asyncio.run(_fails("127.0.0.1", port))
    assert isinstance(exc, EndpointUnavailable)
    with _listener("127.0.0.1", port):
        time.sleep(0.3)  # past retry_at (0.2 s with at most +20 % jitter)
        asyncio.run(_open("127.0.0.1", port))
    record = _status(f"127.0.0.1:{port}")
    assert record["state"] == "closed"
    assert record["successes"] == 1


@pytest.mark.usefixtures("dual_name")
def test_dead_first_address_skipped_at_once() -> None:
    """open_connection to a name whose first address is dead pays the deadline once, then not."""
    _install()
    with blackhole("127.0.0.2") as dead, _listener("127.0.0.3", dead.port):
        first = asyncio.run(_open(DUAL_NAME, dead.port))
        second = asyncio.run(_open(DUAL_NAME, dead.port))
    assert DEADLINE * 0.8 < first < DEADLINE + 1.5
    assert second < FAST
    assert _status(f"127.0.0.2:{dead.port}")["state"] == "open"
    assert _status(f"127.0.0.3:{dead.port}")["successes"] == 2


def test_observe_mode_changes_nothing() -> None:
    """In observe mode an open endpoint is still connected to (the refusal is the OS's)."""
    _install(mode="observe")
    port = free_port()
    for _ in range(3):
        exc, _ = asyncio.run(_fails("127.0.0.1", port))
        assert type(exc) is ConnectionRefusedError
    assert _status(f"127.0.0.1:{port}")["state"] == "open"


def test_uninstall_restores_sock_connect() -> None:
    """uninstall() puts the loop's own sock_connect back; a dead endpoint is no longer refused."""
    original = vars(asyncio.selector_events.BaseSelectorEventLoop)["sock_connect"]
    _install()
    patched = vars(asyncio.selector_events.BaseSelectorEventLoop)["sock_connect"]
    assert isinstance(patched, wrapt.FunctionWrapper)
    port = free_port()
    asyncio.run(_fails("127.0.0.1", port))
    connguard.uninstall()
    assert vars(asyncio.selector_events.BaseSelectorEventLoop)["sock_connect"] is original
    exc, _ = asyncio.run(_fails("127.0.0.1", port))
    assert type(exc) is ConnectionRefusedError


@needs_uvloop
def test_uvloop_create_connection_is_guarded() -> None:
    """Under uvloop a dead endpoint is bounded by the deadline, then fails at once."""
    _install()
    assert isinstance(vars(uvloop.Loop)["create_connection"], wrapt.FunctionWrapper)
    with blackhole() as dead:
        exc, took = uvloop.run(_fails(*dead.address))
        assert isinstance(exc, ConnectDeadlineExceeded)
        assert took < DEADLINE + 1.5
        exc, took = uvloop.run(_fails(*dead.address))
        assert isinstance(exc, EndpointUnavailable)
        assert took < FAST
    connguard.uninstall()
    assert "create_connection" not in vars(uvloop.Loop)


_UVLOOP_AFTER_INSTALL = """
import asyncio, json, sys, time
import connguard
connguard.install(environ={}, connect_timeout=0.5, min_connect_timeout=0.5)
import uvloop
port = int(sys.argv[1])

async def attempt():
    started = time.monotonic()
    try:
        await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        return type(exc).__name__, time.monotonic() - started

print(json.dumps([uvloop.run(attempt()), uvloop.run(attempt())]))
"""


@needs_uvloop
def test_uvloop_imported_after_install_is_hooked() -> None:
    """uvloop imported after install() is patched by the post-import hook."""
    with blackhole() as dead:
        out = subprocess.run(
            [sys.executable, "-c", _UVLOOP_AFTER_INSTALL, str(dead.port)],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    (first, _), (second, took) = json.loads(out.stdout)
    assert first == "ConnectDeadlineExceeded"
    assert second == "EndpointTimedOut"  # the fast failure looks like the timeout it follows
    assert took < FAST
