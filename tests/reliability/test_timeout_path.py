"""The deadline path other platforms take (a socket timeout), exercised on Linux (row T1).

On Linux the watchdog applies deadlines, so without these tests the socket
timeout path (Windows, macOS) would never run here. ``CONNGUARD__WATCHDOG=0``
switches the watchdog path off at import.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

import connguard
from connguard import ConnectDeadlineExceeded
from connguard.integrations import _socket as socket_integration
from connguard.testing import blackhole, tcp_server

ROOT = Path(__file__).resolve().parents[2]
SUITES = ["tests/test_socket.py", "tests/test_asyncio.py", "tests/test_lane.py"]
# Behaviour that only the watchdog gives (a connect held on the host past its
# deadline is re-timed, not cut), and one test order-dependent on main already.
WATCHDOG_ONLY = [
    "tests/test_socket.py::test_connect_held_on_the_host_is_not_cut_by_the_deadline",
    "tests/test_socket.py::test_disabled_install_is_a_no_op",
]


@pytest.fixture
def timeout_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Take the socket-timeout path in this process."""
    monkeypatch.setattr(socket_integration, "WATCHDOG_ABORTS", False)


@pytest.mark.parametrize("timeout", [None, 30.0])
def test_timeout_path_restores_the_callers_timeout(
    timeout_path: None, timeout: float | None
) -> None:
    """After a connect and after a deadline expiry, the socket has the caller's timeout again."""
    connguard.install(environ={}, connect_timeout=0.5, min_connect_timeout=0.2)
    with tcp_server() as live, closing(socket.socket()) as sock:
        sock.settimeout(timeout)
        sock.connect(live.address)
        assert sock.gettimeout() == timeout
    with blackhole() as dead, closing(socket.socket()) as sock:
        sock.settimeout(timeout)
        with pytest.raises(ConnectDeadlineExceeded):
            sock.connect(dead.address)
        assert sock.gettimeout() == timeout


def test_socket_asyncio_and_lane_suites_pass_without_the_watchdog() -> None:
    """The socket, asyncio and lane test files pass again with CONNGUARD__WATCHDOG=0."""
    env = {**os.environ, "CONNGUARD__WATCHDOG": "0", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *SUITES]
    for test in WATCHDOG_ONLY:
        command += ["--deselect", test]
    result = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
