"""Plain helpers shared by the test modules (called mid-test with arguments, so not fixtures)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A loopback port with nothing bound to it (bound, then released): a connect is refused."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


def wait_for(predicate: Callable[[], object], timeout: float = 3.0) -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.002)
