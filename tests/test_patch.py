"""The patch mechanism: plain-function hot path, displacement, uninstall under other patches."""

from __future__ import annotations

import _socket
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from typing import Any

import pytest
import wrapt

import connguard
from connguard import ConnectDeadlineExceeded, EndpointUnavailable
from connguard.testing import blackhole

# These tests use refused loopback ports as dead endpoints (see conftest).
pytestmark = pytest.mark.usefixtures("every_failure_counts")

_TRUE_CONNECT = _socket.socket.connect


@contextmanager
def listener() -> Iterator[socket.socket]:
    """A listening socket that is never accepted from (the backlog is enough)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    with closing(sock):
        yield sock


def free_port() -> int:
    with listener() as sock:
        return int(sock.getsockname()[1])


def connect(address: tuple[str, int], timeout: float | None = None) -> None:
    with closing(socket.socket()) as sock:
        sock.settimeout(timeout)
        sock.connect(address)


def open_circuit(port: int) -> None:
    """Refuse once: a never-connected endpoint's circuit opens on its first failure."""
    with pytest.raises(ConnectionRefusedError):
        connect(("127.0.0.1", port))
    with pytest.raises(EndpointUnavailable):
        connect(("127.0.0.1", port))


@pytest.fixture(autouse=True)
def _socket_connect_restored() -> Iterator[None]:
    """Whatever a test stacks on socket.socket.connect, the next test starts clean."""
    yield
    connguard.uninstall()
    for name in ("connect", "connect_ex"):
        if name in vars(socket.socket):
            delattr(socket.socket, name)


def test_hot_attributes_are_plain_functions_that_look_like_the_originals() -> None:
    """connect/connect_ex are plain functions carrying the originals' name and __wrapped__."""
    connguard.install(environ={})
    for name in ("connect", "connect_ex"):
        installed = vars(socket.socket)[name]
        assert type(installed).__name__ == "function"
        assert installed.__name__ == name
        assert installed.__wrapped__ is getattr(_socket.socket, name)


def test_plain_monkeypatch_on_top_then_uninstall_passes_through() -> None:
    """A monkeypatch stacked on connguard's wrapper: after uninstall() no fast failure."""
    connguard.install(environ={}, open_seconds=60)
    below = socket.socket.connect
    calls: list[Any] = []

    def patched(sock: Any, address: Any) -> Any:
        calls.append(address)
        return below(sock, address)

    socket.socket.connect = patched  # type: ignore[method-assign]
    port = free_port()
    open_circuit(port)
    connguard.uninstall()
    assert not connguard.is_installed()
    assert vars(socket.socket)["connect"] is patched  # theirs stays
    with pytest.raises(ConnectionRefusedError) as info:
        connect(("127.0.0.1", port))
    assert not isinstance(info.value, EndpointUnavailable)
    assert len(calls) == 3


def test_wrapt_instrumenter_on_top_is_spliced_and_keeps_working() -> None:
    """An OpenTelemetry-style wrapt wrapper on top: connguard splices itself out."""
    seen: list[Any] = []

    def spy(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        seen.append(instance)
        return wrapped(*args, **kwargs)

    connguard.install(environ={})
    wrapt.wrap_object(socket.socket, "connect", wrapt.FunctionWrapper, (spy,), {})
    connguard.uninstall()
    proxy = vars(socket.socket)["connect"]
    assert proxy.__wrapped__ is _TRUE_CONNECT
    with listener() as server, closing(socket.socket()) as sock:
        sock.connect(server.getsockname())
        assert seen == [sock]


def test_connguard_over_a_wrapt_instrumenter_binds_it_to_the_socket() -> None:
    """Installed over another wrapt wrapper, connguard calls it with the socket as instance."""
    seen: list[Any] = []

    def spy(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        seen.append(instance)
        return wrapped(*args, **kwargs)

    wrapt.wrap_object(socket.socket, "connect", wrapt.FunctionWrapper, (spy,), {})
    connguard.install(environ={})
    with listener() as server, closing(socket.socket()) as sock:
        sock.connect(server.getsockname())
        assert seen == [sock]
    assert connguard.status()[0]["successes"] == 1
    connguard.uninstall()
    assert type(vars(socket.socket)["connect"]).__name__ == "FunctionWrapper"


def test_naive_restore_is_undone_at_the_next_check(caplog: pytest.LogCaptureFixture) -> None:
    """Setting connect back to the very original (pytest-socket's restore) re-guards."""
    connguard.install(environ={}, open_seconds=60)
    port = free_port()
    socket.socket.connect = _TRUE_CONNECT  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="connguard"):
        assert connguard.is_installed()
    assert connguard.displaced() == []
    assert "set back to its original; guarded again" in caplog.text
    open_circuit(port)


@pytest.mark.slow
def test_naive_restore_is_undone_by_the_idle_tick_alone() -> None:
    """With no status() call at all, the watchdog's idle tick puts the wrapper back."""
    connguard.install(environ={})
    guarded = vars(socket.socket)["connect"]
    socket.socket.connect = _TRUE_CONNECT  # type: ignore[method-assign]
    deadline = time.monotonic() + 20  # the tick runs every 5 s once idle (after ~1 s)
    while vars(socket.socket).get("connect") is not guarded and time.monotonic() < deadline:
        time.sleep(0.2)
    assert vars(socket.socket).get("connect") is guarded


def test_deleted_override_is_put_back() -> None:
    """``del socket.socket.connect`` (another tool's restore) is undone at status()."""
    connguard.install(environ={}, open_seconds=60)
    del socket.socket.connect
    connguard.status()
    open_circuit(free_port())


def test_something_else_is_left_alone_logged_once_and_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A foreign connect standing in connguard's place stays, is logged once, is reported."""
    connguard.install(environ={})

    def foreign_connect(sock: Any, address: Any) -> Any:
        return _TRUE_CONNECT(sock, address)

    socket.socket.connect = foreign_connect  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="connguard"):
        for _ in range(3):
            assert connguard.is_installed()
            assert connguard.displaced() == ["socket.connect"]
    lines = [r.getMessage() for r in caplog.records if "replaced by" in r.getMessage()]
    assert len(lines) == 1
    assert "socket.connect" in lines[0]
    assert "foreign_connect" in lines[0]
    assert vars(socket.socket)["connect"] is foreign_connect
    socket.socket.connect = _TRUE_CONNECT  # type: ignore[method-assign]
    assert connguard.displaced() == []  # the naive restore: guarded again


def test_displaced_is_empty_when_not_installed() -> None:
    """Without install() nothing is checked and nothing is displaced."""
    socket.socket.connect = _TRUE_CONNECT  # type: ignore[method-assign]
    assert connguard.displaced() == []
    assert not connguard.is_installed()
    assert vars(socket.socket)["connect"] is _TRUE_CONNECT


def test_connect_admitted_before_uninstall_keeps_its_deadline() -> None:
    """A blackholed connect in flight at uninstall() still ends at its deadline."""
    connguard.install(environ={}, connect_timeout=0.5, min_connect_timeout=0.5)
    outcome: list[BaseException | None] = []

    with blackhole() as dead:

        def run() -> None:
            try:
                connect(dead.address)  # no timeout of its own: only connguard bounds it
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        started = time.monotonic()
        thread = threading.Thread(target=run)
        thread.start()
        time.sleep(0.1)  # its SYN is out, watched
        connguard.uninstall()
        thread.join(6)
        elapsed = time.monotonic() - started
    assert not thread.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], ConnectDeadlineExceeded)
    assert elapsed < 3.0  # bounded near its 0.5 s deadline, not left to the kernel


def test_old_guard_is_silent_after_uninstall(caplog: pytest.LogCaptureFixture) -> None:
    """After uninstall() a stale wrapper stacked below a monkeypatch neither logs nor counts."""
    connguard.install(environ={}, open_seconds=60)
    below = socket.socket.connect

    def patched(sock: Any, address: Any) -> Any:
        return below(sock, address)

    socket.socket.connect = patched  # type: ignore[method-assign]
    connguard.uninstall()
    caplog.clear()  # install()/uninstall()'s own lines are not the point
    with caplog.at_level(logging.DEBUG, logger="connguard"):
        for _ in range(3):
            with pytest.raises(ConnectionRefusedError):
                connect(("127.0.0.1", free_port()))
    assert [r.getMessage() for r in caplog.records] == []


def test_stale_wrapt_wrapper_passes_through_after_uninstall() -> None:
    """asyncio's wrapt-patched sock_connect under a monkeypatch stops failing fast at uninstall."""
    import asyncio
    import asyncio.selector_events as selector_events

    loop_class = selector_events.BaseSelectorEventLoop
    saved = vars(loop_class)["sock_connect"]
    connguard.install(environ={}, open_seconds=60)
    below = loop_class.sock_connect

    async def patched(self: Any, sock: Any, address: Any) -> Any:
        return await below(self, sock, address)

    loop_class.sock_connect = patched  # type: ignore[method-assign]
    try:
        port = free_port()

        async def attempt() -> BaseException:
            with closing(socket.socket()) as sock:
                sock.setblocking(False)
                try:
                    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
                except OSError as exc:
                    return exc
            raise AssertionError("connected to a closed port")

        assert isinstance(asyncio.run(attempt()), ConnectionRefusedError)
        assert isinstance(asyncio.run(attempt()), EndpointUnavailable)
        connguard.uninstall()
        after = asyncio.run(attempt())
        assert isinstance(after, ConnectionRefusedError)
        assert not isinstance(after, EndpointUnavailable)
    finally:
        loop_class.sock_connect = saved  # type: ignore[method-assign]
