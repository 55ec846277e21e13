"""Against the real pytest-socket plugin: its restore after each test does not unguard."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("pytest_socket")

_SESSION = """
import _socket
import socket
from contextlib import closing

import pytest

import connguard
from connguard import EndpointUnavailable

PORT = {port}


def connect():
    with closing(socket.socket()) as sock:
        sock.connect(("127.0.0.1", PORT))


def test_one():
    assert connguard.install(
        environ={{}}, open_seconds=600, max_open_seconds=600, costly_failure=0
    )
    with pytest.raises(ConnectionRefusedError):
        connect()
    with pytest.raises(EndpointUnavailable):
        connect()


def test_two():
    # pytest-socket set socket.socket.connect back to what it saved at import.
    assert vars(socket.socket).get("connect") is _socket.socket.connect
    assert connguard.is_installed()  # the check: connguard's wrapper is back
    assert connguard.displaced() == []
    with pytest.raises(EndpointUnavailable):
        connect()
    assert connguard.status()[0]["fast_failures"] == 2
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_two_test_session_with_pytest_socket_keeps_guarding(tmp_path: Path) -> None:
    """After pytest-socket's restore between tests, connguard guards the second test."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # not this project's settings
    (tmp_path / "test_session.py").write_text(textwrap.dedent(_SESSION.format(port=_free_port())))
    env = dict(os.environ, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "pytest_socket", "-q", "test_session.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
