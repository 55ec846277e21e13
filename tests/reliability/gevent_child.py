"""Run in a child process by test_gevent.py: gevent must patch before anything else runs.

argv: ORDER (gevent-first | connguard-first) SCENARIO (guard | lane); prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import ExitStack
from typing import Any

ORDER, SCENARIO = sys.argv[1], sys.argv[2]
FAST: dict[str, Any] = {"connect_timeout": 0.5, "min_connect_timeout": 0.2, "open_seconds": 30}

if ORDER == "gevent-first":
    from gevent import monkey

    monkey.patch_all()

import connguard  # noqa: E402
from connguard.testing import blackhole, tcp_server  # noqa: E402

stack = ExitStack()
dead = stack.enter_context(blackhole())
live = stack.enter_context(tcp_server())
if SCENARIO == "lane":
    FAST |= {"max_inflight_connects": 1, "background": f"127.0.0.1:{dead.port}"}
    FAST["connect_timeout"] = 1.0
connguard.install(environ={}, **FAST)
if ORDER == "connguard-first":
    from gevent import monkey

    monkey.patch_all()

import socket  # noqa: E402

import gevent  # noqa: E402

result: dict[str, Any] = {"socket_class": f"{socket.socket.__module__}.{socket.socket.__name__}"}


def timed(call: Any) -> tuple[str, float]:
    started = time.monotonic()
    try:
        call()
        outcome = "ok"
    except OSError as exc:
        outcome = type(exc).__name__
    return outcome, time.monotonic() - started


def connect(address: tuple[str, int]) -> None:
    socket.create_connection(address).close()


def ticks_during(call: Any) -> tuple[tuple[str, float], int]:
    """Run ``call`` in a greenlet and count how often another greenlet got to run."""
    ticks = 0
    done = False

    def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            gevent.sleep(0.01)

    ticking = gevent.spawn(ticker)
    try:
        return gevent.spawn(timed, call).get(), ticks
    finally:
        done = True
        ticking.join()


if SCENARIO == "guard":
    result["live"] = timed(lambda: connect(live.address))
    result["dead"], result["ticks"] = ticks_during(lambda: connect(dead.address))
    result["dead_again"] = timed(lambda: connect(dead.address))
    with socket.socket() as sock:
        result["connect_ex"] = sock.connect_ex(dead.address)
else:
    # A background greenlet holds the only slot on a dead endpoint; a foreground
    # greenlet's live connect preempts it instead of waiting out its deadline.
    background = gevent.spawn(timed, lambda: connect(dead.address))
    gevent.sleep(0.1)
    result["foreground"] = gevent.spawn(timed, lambda: connect(live.address)).get()
    result["background"] = background.get()
    lane = connguard.lane_status() or {}
    result["preemptions"] = lane.get("preemptions")
result["status"] = {r["endpoint"]: r["state"] for r in connguard.status()}
result["dead_endpoint"] = f"127.0.0.1:{dead.port}"
result["live_endpoint"] = f"127.0.0.1:{live.port}"
connguard.uninstall()
stack.close()
print(json.dumps(result))
