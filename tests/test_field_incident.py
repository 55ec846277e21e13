"""The field incident in miniature: a one-slot host, a dead collector, real LDAP logins.

A short, behaviour-level version of ``benchmarks/field_incident.py`` with
generous bounds: the agent's dead connect lasts 2 s instead of Windows' 21 s.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

import connguard
from connguard.demo.login import ldap_login
from connguard.demo.scenario import Agent, Load, Sample
from connguard.demo.slapd import SlapdServer, running_slapd
from connguard.testing import blackhole, serialized_host

ldap3 = pytest.importorskip("ldap3")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("slapd") is None and not os.path.exists("/usr/sbin/slapd"),
        reason="slapd is not installed",
    ),
]

DEAD_CONNECT = 2.0
RATE = 5.0


@pytest.fixture(scope="module")
def slapd() -> Iterator[SlapdServer]:
    with running_slapd() as server:
        yield server


def _login(server: SlapdServer) -> None:
    ldap_login(server.url, server.user_dn, server.user_password, receive_timeout=10)


def _scenario(
    server: SlapdServer,
    seconds: float,
    *,
    install: dict[str, object] | None = None,
    collector_in_background: bool = False,
) -> tuple[list[Sample], Agent, bool]:
    """Logins for ``seconds`` while the agent reconnects to a blackhole; (samples, agent, lane)."""
    _login(server)  # warm up ldap3 outside the emulator
    with blackhole() as dead, serialized_host(1):
        if install is not None:
            if collector_in_background:
                install = {**install, "background": f"{dead.host}:{dead.port}"}
            connguard.install(**install)
        try:
            origin = time.monotonic()
            agent = Agent(dead.address, dead_connect=DEAD_CONNECT)
            agent.start(origin)
            load = Load(lambda: _login(server), RATE, seconds)
            try:
                load.run(origin)
            finally:
                agent.stop(abort=True)
                load.join(30.0)
            # The lane counts only once it really hands out slots.
            lane = (connguard.lane_status() or {}).get("granted", 0) > 0
        finally:
            connguard.uninstall()
    return load.snapshot(), agent, lane


def test_without_connguard_logins_wait_behind_the_agents_dead_connect(
    slapd: SlapdServer,
) -> None:
    """With no guard, logins due while the agent's 2 s dead connect is in flight stall over 1 s."""
    samples, agent, _ = _scenario(slapd, 3.0)
    first = agent.attempts[0]
    assert first.outcome == "timeout"
    behind = [s for s in samples if s.at < first.end - 1.2]
    assert behind, "no login was due while the first dead connect was in flight"
    assert all(s.latency >= 1.0 for s in behind)
    assert all(s.ok for s in samples)


def test_with_connguard_logins_stop_stalling_once_the_circuit_opens(slapd: SlapdServer) -> None:
    """With connguard defaults the agent fails fast after its first dead connect; logins flow."""
    samples, agent, _ = _scenario(slapd, 5.5, install={})
    first = agent.attempts[0]
    assert first.outcome == "timeout"
    assert first.end - first.start <= DEAD_CONNECT + 0.5
    later = [a for a in agent.attempts[1:] if a.start < first.end + 3.0]
    assert later, "the agent made no attempt while the circuit was open"
    assert all(a.outcome == "fast" for a in later)
    after = [s for s in samples if first.end + 0.3 <= s.at <= first.end + 3.0]
    assert len(after) >= 8
    assert max(s.latency for s in after) < 0.5
    assert all(s.ok for s in after)


def test_with_the_lane_no_login_waits_for_the_background_agent(slapd: SlapdServer) -> None:
    """With connguard running the one-slot lane, agent in the background, no login stalls."""
    samples, agent, lane = _scenario(
        slapd, 3.0, install={"max_inflight_connects": 1}, collector_in_background=True
    )
    if not lane:
        pytest.skip("the connect lane (CONNGUARD_MAX_INFLIGHT_CONNECTS) is not implemented yet")
    assert agent.attempts
    assert all(s.ok for s in samples)
    assert max(s.latency for s in samples) < 0.5


def test_demo_runs_both_sides_and_prints_the_table() -> None:
    """`connguard demo` (short, embedded login service) says what it used and prints the table."""
    result = subprocess.run(
        [sys.executable, "-m", "connguard", "demo", "--seconds", "6", "--dead-connect", "6",
         "--login", "embedded"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert "embedded login service" in result.stderr
    rows = {line.split("  ")[0]: line for line in result.stdout.splitlines()}
    assert {"no guard (the incident)", "connguard, defaults"} <= rows.keys()
    assert "Without connguard the worst login waited" in result.stdout
    assert result.returncode == 0, result.stdout + result.stderr
