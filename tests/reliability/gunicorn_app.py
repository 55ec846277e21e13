"""A WSGI app for test_gevent.py: served by gunicorn's gevent worker, it connects out.

``connguard.install()`` runs at import: in the worker after gevent's ``patch_all()``,
or with ``--preload`` in the master before it (the other order).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

import connguard

connguard.install(environ={}, connect_timeout=0.5, min_connect_timeout=0.2, open_seconds=30)


def _outcome(address: tuple[str, int]) -> list[Any]:
    started = time.monotonic()
    try:
        socket.create_connection(address).close()
        name = "ok"
    except OSError as exc:
        name = type(exc).__name__
    return [name, round(time.monotonic() - started, 3)]


def _address(variable: str) -> tuple[str, int]:
    host, port = os.environ[variable].rsplit(":", 1)
    return host, int(port)


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = {
        "socket_class": f"{socket.socket.__module__}.{socket.socket.__name__}",
        "live": _outcome(_address("APP_LIVE")),
        "dead": _outcome(_address("APP_DEAD")),
        "dead_again": _outcome(_address("APP_DEAD")),
        "installed": connguard.is_installed(),
        "status": {r["endpoint"]: r["state"] for r in connguard.status()},
    }
    data = json.dumps(body).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [data]
