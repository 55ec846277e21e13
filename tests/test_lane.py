"""The connect lane: priorities, preemption, fail-fast queueing, threads and asyncio together."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from _helpers import wait_for

import connguard
from connguard import LaneTimeout
from connguard._gate import Lane
from connguard.testing import SerializedHost, blackhole, http_server, serialized_host, tcp_server

# These tests use refused loopback ports as dead endpoints (see conftest).
pytestmark = pytest.mark.usefixtures("every_failure_counts")

# How long a dead (blackholed) connect may hold a slot in these tests.
DEAD = 1.5


def _run_in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, dict[str, object]]:
    """Run ``fn`` in a thread; its result or exception and duration land in the dict."""
    out: dict[str, object] = {}

    def run() -> None:
        started = time.monotonic()
        try:
            out["result"] = fn()
        except BaseException as exc:
            out["error"] = exc
        out["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def _connect(address: tuple[str, int], timeout: float | None = None) -> float:
    """A blocking connect; returns its duration."""
    started = time.monotonic()
    with socket.socket() as sock:
        sock.settimeout(timeout)
        sock.connect(address)
    return time.monotonic() - started


@contextlib.contextmanager
def _one_slot_host() -> Iterator[SerializedHost]:
    """The emulated one-slot host; connguard is uninstalled before the emulator goes."""
    with serialized_host(1) as host:
        try:
            yield host
        finally:
            connguard.uninstall()


def _lane() -> dict[str, object]:
    status = connguard.lane_status()
    assert status is not None
    return status


# -- the field experiment, inverted -------------------------------------------------------


def test_foreground_connect_preempts_background_blackhole_connect() -> None:
    """With the lane on, a login connect 0.5 s after the collector's dead connect takes ms."""
    with _one_slot_host(), blackhole() as dead, tcp_server() as live:
        connguard.install(
            environ={},
            max_inflight_connects=1,
            background=f"127.0.0.1:{dead.port}",
            connect_timeout=DEAD,
        )
        collector, out = _run_in_thread(lambda: _connect(dead.address))
        time.sleep(0.5)
        login = _connect(live.address)
        collector.join(5)
        assert login < 0.3
        assert _lane()["preemptions"] == 1
        # The preempted connect retried and then ran out of its own deadline.
        assert isinstance(out["error"], connguard.ConnectDeadlineExceeded)
        assert float(out["seconds"]) == pytest.approx(DEAD, abs=0.5)  # type: ignore[arg-type]
        assert live.accepted <= 1


def test_without_connguard_the_foreground_connect_waits_behind_the_dead_one() -> None:
    """The same scenario unguarded: the login waits until the dead connect gives up."""
    with _one_slot_host(), blackhole() as dead, tcp_server() as live:
        collector, _ = _run_in_thread(lambda: _connect(dead.address, timeout=DEAD))
        time.sleep(0.5)
        login = _connect(live.address, timeout=5)
        collector.join(5)
        assert login > DEAD - 0.5 - 0.2


def test_environment_configuration_end_to_end() -> None:
    """CONNGUARD_MAX_INFLIGHT_CONNECTS=1 and CONNGUARD_BACKGROUND through install() work."""
    with _one_slot_host(), blackhole() as dead, http_server() as web:
        connguard.install(
            environ={
                "CONNGUARD_MAX_INFLIGHT_CONNECTS": "1",
                "CONNGUARD_BACKGROUND": f"127.0.0.1:{dead.port}",
                "CONNGUARD_CONNECT_TIMEOUT": str(DEAD),
            }
        )
        collector, _ = _run_in_thread(lambda: _connect(dead.address))
        time.sleep(0.3)
        started = time.monotonic()
        with httpx.Client() as client:  # literal host: httpx owns the ticket, socket the slot
            assert client.get(web.url).status_code == 200
        assert time.monotonic() - started < 0.3
        collector.join(5)
        status = _lane()
        assert status["slots"] == 1
        assert status["preemptions"] == 1
        records = {r["endpoint"]: r for r in connguard.status()}
        assert records[f"127.0.0.1:{dead.port}"]["priority"] == "background"
        json.dumps(status)


def test_override_priority_marks_an_endpoint_background() -> None:
    """CONNGUARD_OVERRIDES priority=background makes the endpoint preemptible."""
    with _one_slot_host(), blackhole() as dead, tcp_server() as live:
        connguard.install(
            environ={
                "CONNGUARD_MAX_INFLIGHT_CONNECTS": "1",
                "CONNGUARD_OVERRIDES": f"127.0.0.1:{dead.port} priority=background",
            },
            connect_timeout=DEAD,
        )
        collector, _ = _run_in_thread(lambda: _connect(dead.address))
        time.sleep(0.3)
        assert _connect(live.address) < 0.3
        collector.join(5)


def test_foreground_holder_is_not_preempted() -> None:
    """Two foreground connects: the second waits its turn (no preemption between equals)."""
    with blackhole() as dead, tcp_server() as live:
        connguard.install(
            environ={}, max_inflight_connects=1, connect_timeout=1.0, min_connect_timeout=0.3
        )
        first, out = _run_in_thread(lambda: _connect(dead.address))
        time.sleep(0.2)
        second = _connect(live.address)
        first.join(5)
        assert isinstance(out["error"], connguard.ConnectDeadlineExceeded)
        assert second > 0.5  # waited for the dead foreground connect's deadline
        assert _lane()["preemptions"] == 0


# -- queueing ---------------------------------------------------------------------------


def test_queued_connect_that_cannot_make_its_deadline_fails_fast() -> None:
    """Behind a holder expected to take 2 s, a waiter with 0.5 s left fails at once."""
    lane = Lane(1)
    holder = lane.acquire("dead:1", background=False, timeout=2.0, expected=2.0)
    started = time.monotonic()
    with pytest.raises(LaneTimeout) as caught:
        lane.acquire("live:2", background=False, timeout=0.5)
    assert time.monotonic() - started < 0.05
    assert "connect lane" in str(caught.value)
    assert caught.value.endpoint == "live:2"
    lane.release(holder)
    assert lane.status()["lane_timeouts"] == 1


def test_lane_timeout_is_not_an_endpoint_failure() -> None:
    """A connect whose own timeout ends while queued raises LaneTimeout and counts nothing."""
    with blackhole() as dead, tcp_server() as live:
        connguard.install(environ={}, max_inflight_connects=1, connect_timeout=DEAD)
        _connect(live.address)
        holder, _ = _run_in_thread(lambda: _connect(dead.address))
        wait_for(lambda: _lane()["in_use"] == 1)
        started = time.monotonic()
        with pytest.raises(LaneTimeout) as caught:
            _connect(live.address, timeout=0.4)
        assert time.monotonic() - started < 0.6
        assert isinstance(caught.value, TimeoutError)
        holder.join(5)
        record = {r["endpoint"]: r for r in connguard.status()}[f"127.0.0.1:{live.port}"]
        assert record["failures"] == 0
        assert record["state"] == "closed"
        assert _lane()["lane_timeouts"] == 1


def test_time_queued_is_not_connect_time() -> None:
    """A connect that waited in the lane records only its own connect time."""
    with blackhole() as dead, tcp_server() as live:
        connguard.install(
            environ={"CONNGUARD_OVERRIDES": f"127.0.0.1:{live.port} connect_timeout=3"},
            max_inflight_connects=1,
            connect_timeout=0.6,
            min_connect_timeout=0.3,
        )
        holder, _ = _run_in_thread(lambda: _connect(dead.address))
        wait_for(lambda: _lane()["in_use"] == 1)
        waited = _connect(live.address)
        holder.join(5)
        assert waited > 0.3
        record = {r["endpoint"]: r for r in connguard.status()}[f"127.0.0.1:{live.port}"]
        assert record["srtt"] < 0.05
        assert record["failures"] == 0


def test_connect_ex_reports_lane_outcomes_as_errno() -> None:
    """connect_ex through the lane returns 0 on success and ETIMEDOUT for a lane timeout."""
    with blackhole() as dead, tcp_server() as live:
        connguard.install(
            environ={}, max_inflight_connects=1, connect_timeout=1.0, min_connect_timeout=0.3
        )
        with socket.socket() as sock:
            assert sock.connect_ex(live.address) == 0
        _connect(live.address)
        holder, _ = _run_in_thread(lambda: _connect(dead.address))
        wait_for(lambda: _lane()["in_use"] == 1)
        with socket.socket() as sock:
            sock.settimeout(0.3)
            assert sock.connect_ex(live.address) == errno.ETIMEDOUT
        holder.join(5)


def _queued(lane: Lane) -> int:
    status = lane.status()
    return int(status["queued_foreground"]) + int(status["queued_background"])


def test_lane_serves_foreground_first_then_fifo() -> None:
    """Waiters are served foreground first, first come first served within a class."""
    lane = Lane(1)
    holder = lane.acquire("holder", background=False, timeout=None)
    order: list[str] = []
    threads = []
    for name, background in [("bg1", True), ("fg1", False), ("bg2", True), ("fg2", False)]:

        def take(name: str = name, background: bool = background) -> None:
            slot = lane.acquire(name, background=background, timeout=5)
            order.append(name)
            lane.release(slot)

        thread = threading.Thread(target=take, daemon=True)
        thread.start()
        threads.append(thread)
        queued = len(threads)
        wait_for(lambda q=queued: _queued(lane) == q)  # type: ignore[misc]
    lane.release(holder)
    for thread in threads:
        thread.join(5)
    assert order == ["fg1", "fg2", "bg1", "bg2"]


def test_slot_never_released_is_reclaimed_after_its_lease() -> None:
    """A holder that never gives its slot back cannot close the lane for good."""
    lane = Lane(1)
    lane.acquire("lost", background=False, timeout=0.1)  # never released
    started = time.monotonic()
    slot = lane.acquire("next", background=False, timeout=5)
    assert 0.9 < time.monotonic() - started < 3
    lane.release(slot)
    assert lane.status()["in_use"] == 0


# -- asyncio ----------------------------------------------------------------------------


def test_asyncio_tasks_share_the_lane_with_threads_without_blocking_the_loop() -> None:
    """A task queued behind a thread's connect waits without freezing the event loop."""
    with blackhole() as dead, tcp_server() as live:
        connguard.install(
            environ={"CONNGUARD_OVERRIDES": f"127.0.0.1:{live.port} connect_timeout=3"},
            max_inflight_connects=1,
            connect_timeout=0.8,
            min_connect_timeout=0.3,
        )
        holder, _ = _run_in_thread(lambda: _connect(dead.address))
        wait_for(lambda: _lane()["in_use"] == 1)

        async def main() -> tuple[float, int]:
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            beat = asyncio.create_task(ticker())
            started = time.monotonic()
            _, writer = await asyncio.open_connection(*live.address)
            waited = time.monotonic() - started
            writer.close()
            await writer.wait_closed()
            beat.cancel()
            return waited, ticks

        waited, ticks = asyncio.run(main())
        holder.join(5)
        assert waited > 0.4  # it did queue behind the thread's dead connect
        assert ticks > waited / 0.01 / 3  # and the loop kept running meanwhile
        assert _lane()["waited"] >= 1


def test_asyncio_foreground_preempts_a_background_thread_connect() -> None:
    """A foreground asyncio connect preempts a thread's background connect to a blackhole."""
    with blackhole() as dead, tcp_server() as live:
        connguard.install(
            environ={},
            max_inflight_connects=1,
            background=f"127.0.0.1:{dead.port}",
            connect_timeout=DEAD,
        )
        holder, _ = _run_in_thread(lambda: _connect(dead.address))
        wait_for(lambda: _lane()["in_use"] == 1)

        async def main() -> float:
            started = time.monotonic()
            _, writer = await asyncio.open_connection(*live.address)
            writer.close()
            await writer.wait_closed()
            return time.monotonic() - started

        assert asyncio.run(main()) < 0.3
        holder.join(5)
        assert _lane()["preemptions"] == 1


def test_background_asyncio_connect_is_preempted_by_a_thread() -> None:
    """A thread's foreground connect preempts an asyncio task's background connect."""
    with blackhole() as dead, tcp_server() as live:
        connguard.install(
            environ={},
            max_inflight_connects=1,
            background=f"127.0.0.1:{dead.port}",
            connect_timeout=DEAD,
        )

        async def collector() -> BaseException | None:
            try:
                await asyncio.open_connection(*dead.address)
            except OSError as exc:
                return exc
            return None

        loop_thread, out = _run_in_thread(lambda: asyncio.run(collector()))
        wait_for(lambda: _lane()["in_use"] == 1)
        time.sleep(0.1)
        assert _connect(live.address) < 0.3
        loop_thread.join(5)
        assert _lane()["preemptions"] == 1
        assert isinstance(out["result"], TimeoutError)


def test_lane_status_without_lane_reports_zero_slots() -> None:
    """lane_status() reports slots 0 when the lane is off, and None when not installed."""
    connguard.install(environ={})
    assert _lane()["slots"] == 0
    connguard.uninstall()
    assert connguard.lane_status() is None
