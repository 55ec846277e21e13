"""The prober scales (issue 14, row F8): a live endpoint is not kept behind dead probes."""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager
from typing import Any

import pytest

import connguard
from connguard import ConnectDeadlineExceeded
from connguard._api import _state
from connguard.testing import blackhole

DEAD_ENDPOINTS = 15
DEADLINE = 1.0


@contextmanager
def revivable_blackhole() -> Iterator[tuple[tuple[str, int], threading.Event]]:
    """A loopback blackhole (full backlog-0 queue) that starts accepting when told to."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    address = listener.getsockname()
    filler = socket.socket()
    filler.connect(address)  # fills the queue: later SYNs are dropped
    revive, stop = threading.Event(), threading.Event()

    def serve() -> None:
        revive.wait()
        while not stop.is_set():
            if select.select([listener], [], [], 0.05)[0]:
                listener.accept()[0].close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield address, revive
    finally:
        stop.set()
        revive.set()
        thread.join(5)
        filler.close()
        listener.close()


def record(label: str) -> dict[str, Any]:
    (found,) = [r for r in connguard.status() if r["endpoint"] == label]
    return found


def _fail_once(address: tuple[str, int]) -> None:
    with closing(socket.socket()) as sock, pytest.raises(ConnectDeadlineExceeded):
        sock.connect(address)


def test_live_endpoint_is_found_while_many_dead_ones_are_probed() -> None:
    """With 15 blackholed endpoints open, one that comes back is closed within seconds."""
    with ExitStack() as stack, revivable_blackhole() as (coming_back, revive):
        dead = [stack.enter_context(blackhole()).address for _ in range(DEAD_ENDPOINTS)]
        connguard.install(
            environ={},
            connect_timeout=DEADLINE,
            min_connect_timeout=DEADLINE,
            open_seconds=0.5,
            max_open_seconds=1.0,
        )
        _fail_once(coming_back)  # first in the table, so a serial prober meets it first
        openers = [threading.Thread(target=_fail_once, args=(a,)) for a in dead]
        for thread in openers:
            thread.start()
        for thread in openers:
            thread.join(10)
        label = f"127.0.0.1:{coming_back[1]}"
        states = {r["endpoint"]: r["state"] for r in connguard.status()}
        assert len([s for s in states.values() if s != "closed"]) == DEAD_ENDPOINTS + 1
        # Revive it just after a probe found it still dead: the dead ones are due next.
        waited = time.monotonic()
        while record(label)["openings"] < 2 and time.monotonic() - waited < 20:
            time.sleep(0.02)
        revive.set()
        revived = time.monotonic()
        while time.monotonic() - revived < 15:
            if record(label)["state"] == "closed":
                break
            time.sleep(0.05)
        found_after = time.monotonic() - revived
        prober = _state.prober
        assert prober is not None
        assert found_after < 4.0  # a serial prober needs up to 15 deadlines (15 s) per round
        assert prober.max_concurrent > 1
