"""Network-isolated integration tests: real dead ports and hosts inside our own namespaces.

Two network namespaces joined by a veth pair (10.250.0.0/24, no default route).
In the server namespace, nftables drops SYNs to one port of 10.250.0.2 (a
filtered port) and everything sent to 10.250.0.3 (a dead host), while a Python
HTTP server answers on 10.250.0.2:8080. The client code runs in the client
namespace (``ip netns exec``), so every packet stays inside namespaces this
module creates. Needs root, ``ip`` and ``nft``; namespaces are deleted and the
server stopped by PID afterwards, even on failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(
        sys.platform != "linux" or os.geteuid() != 0,
        reason="needs root on Linux to create network namespaces (CI runs as root)",
    ),
    pytest.mark.skipif(
        shutil.which("ip") is None or shutil.which("nft") is None,
        reason="needs iproute2 (ip) and nftables (nft); scripts/bootstrap.sh installs them",
    ),
]

CLIENT_IP = "10.250.0.1"
SERVER_IP = "10.250.0.2"
DEAD_HOST = "10.250.0.3"
LIVE_PORT = 8080
FILTERED_PORT = 9999

_SERVER = f"""
import http.server, sys
class Quiet(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("{SERVER_IP}", {LIVE_PORT}), Quiet)
print("ready", flush=True)
server.serve_forever()
"""

_NFT = f"""
table inet connguard_test {{
    chain input {{
        type filter hook input priority 0; policy accept;
        ip daddr {SERVER_IP} tcp dport {FILTERED_PORT} tcp flags & (syn | ack) == syn drop
        ip daddr {DEAD_HOST} drop
    }}
}}
"""


@dataclass(frozen=True)
class Lab:
    client: str
    server: str

    def run_client(self, code: str, timeout: float = 60.0) -> dict[str, Any]:
        """Run Python ``code`` in the client namespace; return the JSON it prints last."""
        result = subprocess.run(
            ["ip", "netns", "exec", self.client, sys.executable, "-c", textwrap.dedent(code)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        parsed: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
        return parsed


def _sh(*args: str, stdin: str | None = None) -> None:
    subprocess.run(args, input=stdin, text=True, check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """Create the namespaces, the firewall and the live server; tear everything down."""
    tag = f"{os.getpid()}"
    client, server = f"cg-c-{tag}", f"cg-s-{tag}"
    veth_c, veth_s = f"cgc{tag}"[:15], f"cgs{tag}"[:15]
    created: list[str] = []
    proc: subprocess.Popen[str] | None = None
    try:
        for ns in (client, server):
            _sh("ip", "netns", "add", ns)
            created.append(ns)
        _sh("ip", "link", "add", veth_c, "netns", client, "type", "veth",
            "peer", "name", veth_s, "netns", server)  # fmt: skip
        for ns, dev, addrs in (
            (client, veth_c, [CLIENT_IP]),
            (server, veth_s, [SERVER_IP, DEAD_HOST]),
        ):
            for addr in addrs:
                _sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _sh("ip", "-n", ns, "link", "set", dev, "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
        _sh("ip", "netns", "exec", server, "nft", "-f", "-", stdin=_NFT)
        proc = subprocess.Popen(
            ["ip", "netns", "exec", server, sys.executable, "-c", _SERVER],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        yield Lab(client, server)
    finally:
        if proc is not None:
            proc.terminate()  # by PID: ip netns exec execs python in place
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            if proc.stdout is not None:
                proc.stdout.close()
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


_CONNECT_TWICE = """
import json, socket, time
import connguard
connguard.install(connect_timeout=2.0, min_connect_timeout=1.0)
out = []
for _ in range(2):
    started = time.monotonic()
    try:
        socket.create_connection(({host!r}, {port})).close()
        error = None
    except OSError as exc:
        error = type(exc).__name__
    out.append({{"error": error, "seconds": time.monotonic() - started}})
print(json.dumps({{"attempts": out}}))
"""


@pytest.mark.parametrize(
    ("host", "port"),
    [(SERVER_IP, FILTERED_PORT), (DEAD_HOST, 80)],
    ids=["filtered-port", "dead-host"],
)
def test_dead_endpoint_fails_at_the_deadline_then_fast(lab: Lab, host: str, port: int) -> None:
    """An unanswered SYN fails at connguard's 2 s deadline; the next connect fails at once."""
    first, second = lab.run_client(_CONNECT_TWICE.format(host=host, port=port))["attempts"]
    assert first["error"] == "ConnectDeadlineExceeded"
    assert 1.5 <= first["seconds"] <= 4.0
    assert second["error"] == "EndpointTimedOut"  # fails fast as the timeout it follows
    assert second["seconds"] < 0.2


def test_live_server_answers_through_connguard(lab: Lab) -> None:
    """A live HTTP server in the server namespace answers httpx and plain sockets as usual."""
    result = lab.run_client(f"""
        import json, socket, httpx, connguard
        connguard.install(connect_timeout=2.0, min_connect_timeout=1.0)
        response = httpx.get("http://{SERVER_IP}:{LIVE_PORT}/", timeout=5)
        socket.create_connection(("{SERVER_IP}", {LIVE_PORT}), timeout=5).close()
        states = [r["state"] for r in connguard.status()]
        print(json.dumps({{"status": response.status_code, "body": response.text,
                           "states": states}}))
    """)
    assert result == {"status": 200, "body": "ok", "states": ["closed"]}


_FIELD = """
import json, socket, time
import connguard
from connguard._api import current_guard
from connguard.demo.scenario import Agent, Load
from connguard.testing import serialized_host

LIVE = ("{server}", {live})
def login():
    # A new connection per login, no timeout: the field's login pattern.
    with socket.create_connection(LIVE) as sock:
        sock.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")
        assert sock.recv(64).startswith(b"HTTP/1.1 200")

login()  # warm up outside the emulator
with serialized_host(1):
    gate = None
    if {guard!r}:
        connguard.install(max_inflight_connects=1, background="{server}:{dead}")
        gate = current_guard().gate
    try:
        origin = time.monotonic()
        agent = Agent(("{server}", {dead}), dead_connect=3.0)
        agent.start(origin)
        load = Load(login, 5.0, 4.0)
        load.run(origin)
        agent.stop(abort=True)
        load.join(20)
    finally:
        connguard.uninstall()
samples = load.snapshot()
lane = gate is not None and getattr(gate, "granted", 0) > 0  # the lane really ran
print(json.dumps({{"lane": lane, "latencies": [s.latency for s in samples],
                   "failed": sum(not s.ok for s in samples),
                   "attempts": [a.outcome for a in agent.attempts]}}))
"""


def _field(lab: Lab, guard: bool) -> dict[str, Any]:
    code = _FIELD.format(server=SERVER_IP, live=LIVE_PORT, dead=FILTERED_PORT, guard=guard)
    return lab.run_client(code)


def test_field_scenario_without_connguard_stalls_logins(lab: Lab) -> None:
    """On a one-slot host, logins wait behind the agent's 3 s connect to the filtered port."""
    result = _field(lab, guard=False)
    assert result["attempts"][0] == "timeout"
    assert max(result["latencies"]) >= 2.0
    assert result["failed"] == 0


def test_field_scenario_with_the_lane_does_not_stall_logins(lab: Lab) -> None:
    """With the one-slot lane and the agent in the background, no login waits behind it."""
    result = _field(lab, guard=True)
    if not result["lane"]:
        pytest.skip("the connect lane (CONNGUARD_MAX_INFLIGHT_CONNECTS) is not implemented yet")
    assert len(result["latencies"]) == 20
    assert result["failed"] == 0
    assert max(result["latencies"]) < 0.5
