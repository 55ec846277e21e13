"""A fault at any internal call of the connect path never breaks the app's connect."""

from __future__ import annotations

import importlib
import socket
from contextlib import closing
from typing import Any

import pytest

import connguard
from connguard.testing import tcp_server

# (module, class, method) called on the way through a guarded connect. The table's
# lookup is a bound dict.get and the watchdog's insert/remove are dict operations:
# faults inside those are injected in test_watchdog_faults.py.
INTERNAL_CALLS = [
    ("connguard._health", "HealthTable", "add"),
    ("connguard._health", "HealthTable", "_evict"),
    ("connguard._health", "EndpointHealth", "observe_connect_time"),
    ("connguard._guard", "Guard", "_new_health"),
    ("connguard._guard", "Guard", "_record_success"),
    ("connguard._guard", "Guard", "_record_failure"),
    ("connguard._guard", "Guard", "override_for"),
    ("connguard._guard", "Guard", "_backoff"),
    ("connguard._probe", "Prober", "notify"),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(("module", "owner", "name"), INTERNAL_CALLS)
def test_connect_survives_a_fault_in(
    monkeypatch: pytest.MonkeyPatch, module: str, owner: str, name: str
) -> None:
    """With the internal call raising, live connects succeed and refusals stay refusals."""
    cls = getattr(importlib.import_module(module), owner)

    def fault(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"injected fault in {owner}.{name}")

    monkeypatch.setattr(cls, name, fault)
    connguard.install(environ={}, connect_timeout=1.0, min_connect_timeout=0.5)
    refused = ("127.0.0.1", _free_port())
    with tcp_server(mode="echo") as live:
        for _ in range(3):
            with closing(socket.socket()) as sock:
                sock.connect(live.address)
                sock.sendall(b"x")
                assert sock.recv(1) == b"x"
            with closing(socket.socket()) as sock:
                sock.settimeout(5.0)
                sock.connect(live.address)
            with closing(socket.socket()) as sock:
                assert sock.connect_ex(live.address) == 0
            with closing(socket.socket()) as sock, pytest.raises(ConnectionRefusedError):
                sock.connect(refused)
            socket.create_connection(live.address, timeout=2.0).close()
