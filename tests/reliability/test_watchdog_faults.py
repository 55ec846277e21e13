"""The watchdog cannot be turned against the app (issue 14, rows F4 and F5)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from contextlib import closing
from typing import Any

import pytest

import connguard
from connguard import ConnectDeadlineExceeded
from connguard._api import current_guard
from connguard._watchdog import WATCHDOG_ABORTS
from connguard.testing import blackhole, tcp_server

pytestmark = pytest.mark.skipif(not WATCHDOG_ABORTS, reason="the watchdog path is off here")

FAST = {"connect_timeout": 0.5, "min_connect_timeout": 0.2, "open_seconds": 30}


class TwoArgGetsockopt(socket.socket):
    """An application's socket subclass whose getsockopt takes no buflen."""

    def getsockopt(self, level: int, option: int) -> int:  # type: ignore[override]
        return super().getsockopt(level, option)


def _watchdog() -> Any:
    guard = current_guard()
    assert guard is not None
    return guard.watchdog


def _assert_deadline_still_enforced(address: tuple[str, int]) -> None:
    with closing(socket.socket()) as sock:
        started = time.monotonic()
        with pytest.raises(ConnectDeadlineExceeded):
            sock.connect(address)
        assert time.monotonic() - started < 3.0


def test_failing_getsockopt_gives_the_callers_timeout_and_one_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A subclass whose getsockopt fails gets its own TimeoutError, one log line, no spin."""
    caplog.set_level(logging.DEBUG, logger="connguard")
    connguard.install(environ={}, **FAST)
    with blackhole() as dead, blackhole() as other:
        with closing(TwoArgGetsockopt()) as sock:
            sock.settimeout(1.5)
            wall, cpu = time.monotonic(), time.process_time()
            with pytest.raises(TimeoutError):
                sock.connect(dead.address)
            wall, cpu = time.monotonic() - wall, time.process_time() - cpu
        assert wall < 4.0
        assert cpu < 0.5 * wall  # the watchdog slept instead of polling the broken socket
        watchdog_lines = [r for r in caplog.records if "watchdog" in r.getMessage()]
        assert len(watchdog_lines) == 1
        assert _watchdog().dropped == 1
        _assert_deadline_still_enforced(other.address)


def test_socket_closed_mid_connect_ends_its_watch() -> None:
    """Another thread's close() mid-connect ends the watch: no busy-spin, watchdog carries on."""
    connguard.install(environ={}, **FAST)
    outcome: list[BaseException | None] = []
    with blackhole() as dead, blackhole() as other:
        sock = socket.socket()
        # The kernel ends this SYN_SENT by itself (close() from a thread cannot).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 2500)

        def connecting() -> None:
            try:
                sock.connect(dead.address)
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=connecting)
        thread.start()
        time.sleep(0.2)
        sock.close()
        cpu = time.process_time()
        time.sleep(1.0)  # past the 0.5 s deadline: the watchdog meets the closed socket
        assert time.process_time() - cpu < 0.5
        thread.join(10)
        assert not thread.is_alive()
        assert len(outcome) == 1
        assert isinstance(outcome[0], OSError)
        assert _watchdog().dropped == 1
        assert not _watchdog()._inflight
        _assert_deadline_still_enforced(other.address)


class _FailingInsert(dict[int, Any]):
    def __setitem__(self, key: int, value: Any) -> None:
        raise RuntimeError("injected fault: insert")


class _FailingRemove(dict[int, Any]):
    def pop(self, key: int, default: Any = None) -> Any:
        raise RuntimeError("injected fault: remove")


@pytest.mark.parametrize("table", [_FailingInsert, _FailingRemove])
def test_fault_in_watch_or_unwatch_never_reaches_connect(table: type[dict[int, Any]]) -> None:
    """A fault in the watchdog's insert or remove leaves the app's connect succeeding."""
    connguard.install(environ={}, **FAST)
    _watchdog()._inflight = table()
    with tcp_server(mode="echo") as server:
        for _ in range(3):
            with closing(socket.socket()) as sock:
                sock.connect(server.address)
                sock.sendall(b"x")
                assert sock.recv(1) == b"x"
