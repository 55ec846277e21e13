"""gevent is a first-class integration (issue 14, row F1): either order, lane, gunicorn.

gevent has to patch before anything else in a process, so every case runs in a
child process (``gevent_child.py``, or gunicorn serving ``gunicorn_app.py``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from connguard.testing import blackhole, tcp_server

pytest.importorskip("gevent")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
ORDERS = ["gevent-first", "connguard-first"]


def child(order: str, scenario: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, str(HERE / "gevent_child.py"), order, scenario],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return found


@pytest.mark.parametrize("order", ORDERS)
def test_gevent_sockets_are_guarded_in_either_order(order: str) -> None:
    """gevent's sockets get the deadline, then fail fast, and the hub keeps running."""
    found = child(order, "guard")
    assert found["socket_class"] == "gevent._socket3.socket"
    assert found["live"][0] == "ok"
    outcome, took = found["dead"]
    assert outcome == "ConnectDeadlineExceeded"
    assert took < 3.0  # 0.5 s deadline, not the OS's ~130 s
    assert found["ticks"] >= 10  # other greenlets ran while the dead connect waited
    assert found["dead_again"][0] == "EndpointTimedOut"
    assert found["connect_ex"] != 0
    assert found["status"][found["dead_endpoint"]] == "open"
    assert found["status"][found["live_endpoint"]] == "closed"


@pytest.mark.parametrize("order", ORDERS)
def test_greenlets_share_the_connect_lane(order: str) -> None:
    """A foreground greenlet preempts a background greenlet holding the only slot."""
    found = child(order, "lane")
    outcome, took = found["foreground"]
    assert outcome == "ok"
    assert took < 0.5  # did not wait out the background connect's 1 s deadline
    assert found["preemptions"] >= 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_serving(port: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, "gunicorn exited early"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("gunicorn did not start serving within 30 s")


@pytest.mark.parametrize("preload", [False, True], ids=["worker-import", "preload"])
def test_gunicorn_gevent_worker_guards_outbound_connects(preload: bool) -> None:
    """gunicorn -k gevent serves an app whose outbound connects are guarded."""
    pytest.importorskip("gunicorn")
    port = _free_port()
    with blackhole() as dead, tcp_server() as live:
        env = {**ENV, "APP_LIVE": f"127.0.0.1:{live.port}", "APP_DEAD": f"127.0.0.1:{dead.port}"}
        command = [sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", "1"]
        command += ["-b", f"127.0.0.1:{port}", "--chdir", str(HERE), "--graceful-timeout", "2"]
        command += ["--preload"] if preload else []
        command.append("gunicorn_app:app")
        proc = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _wait_until_serving(port, proc)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=20) as response:
                found = json.loads(response.read())
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            if proc.stderr is not None:
                proc.stderr.close()
    assert found["installed"] is True
    assert found["socket_class"] == "gevent._socket3.socket"
    assert found["live"][0] == "ok"
    assert found["dead"][0] == "ConnectDeadlineExceeded"
    assert found["dead"][1] < 3.0
    assert found["dead_again"][0] == "EndpointTimedOut"
