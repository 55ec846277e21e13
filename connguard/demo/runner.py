"""The demo's three rows: each a child process, started and read by the parent.

The parent owns the servers (slapd or the embedded login service, the
blackholed collector), starts one ``connguard demo --child SPEC`` process per
row so that ``install()`` and the emulator never leak from one row into the
next, shows their progress and prints the table and the verdict.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

import connguard

from . import slapd
from .login import embedded_login_service, ldap_login, service_login
from .progress import Progress, table
from .scenario import STALL_SECONDS, Agent, Load, summarize_logins

__all__ = ["ROWS", "run_child", "run_rows"]

RATE = 5.0  # logins per second
ROWS: tuple[tuple[str, str], ...] = (
    ("no-guard", "no guard (the incident)"),
    ("connguard", "connguard, defaults"),
    ("lane", "connguard lane (1 slot, agent in background)"),
)


# -- one row, in a child process --------------------------------------------------------


def run_child(spec: dict[str, Any], out: IO[str]) -> None:
    """Run one row as ``spec`` says, writing progress and the result as JSON lines."""
    from connguard.testing import serialized_host

    host, _, port = spec["collector"].rpartition(":")
    login: Callable[[], None]
    if spec["service"] == "slapd":
        url, user, password = spec["ldap_url"], spec["user"], spec["password"]

        def login() -> None:
            ldap_login(url, user, password)
    else:
        s_host, _, s_port = spec["login_address"].rpartition(":")

        def login() -> None:
            service_login((s_host, int(s_port)))

    def emit(kind: str, **fields: Any) -> None:
        out.write(json.dumps({"type": kind, **fields}) + "\n")
        out.flush()

    login()  # warm up imports, outside the emulator and before install()
    with serialized_host(1):
        if spec["row"] != "no-guard":
            connguard.install()  # configured by the CONNGUARD_* variables the parent set
        try:
            origin = time.monotonic()
            agent = Agent((host, int(port)), dead_connect=spec["dead_connect"])
            agent.start(origin)
            load = Load(login, RATE, spec["seconds"])
            done = threading.Event()
            scheduler = threading.Thread(target=load.run, args=(origin, done), daemon=True)
            scheduler.start()
            while scheduler.is_alive():
                scheduler.join(0.5)
                emit("progress", t=time.monotonic() - origin, **_tally(load))
            # Out of time: cut the agent's attempt short so waiting logins finish.
            agent.stop(abort=True)
            load.join(10.0)
            done.set()
            summary = summarize_logins(load.snapshot())
            # The lane counts only if it really handed out slots.
            lane = (connguard.lane_status() or {}).get("granted", 0) > 0
            emit(
                "result",
                lane=lane,
                cut_short=sum(a.outcome == "aborted" for a in agent.attempts),
                in_flight=load.in_flight(),
                **summary,
            )
        finally:
            connguard.uninstall()


def _tally(load: Load) -> dict[str, Any]:
    samples = load.snapshot()
    return {
        "done": len(samples),
        "waiting": load.in_flight(),
        "stalled": sum(s.latency > STALL_SECONDS for s in samples),
        "worst": max((s.latency for s in samples), default=0.0),
    }


# -- the parent: services, three rows side by side, progress, the table -----------------


def _row_env(row: str, collector: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNGUARD_")}
    if row == "lane":
        env["CONNGUARD_MAX_INFLIGHT_CONNECTS"] = "1"
        env["CONNGUARD_BACKGROUND"] = collector
    return env


def _read_row(
    proc: subprocess.Popen[str], row: str, progress: Progress, results: dict[str, dict[str, Any]]
) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if message.get("type") == "progress":
            progress.update(row, message)
        elif message.get("type") == "result":
            results[row] = message


def run_rows(seconds: float, dead_connect: float, service: str) -> int:
    """Run the three rows side by side; print the table; 0 when connguard helped."""
    from connguard.testing import blackhole

    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        spec: dict[str, Any] = {
            "seconds": seconds,
            "dead_connect": dead_connect,
            "service": service,
        }
        if service == "slapd":
            server = stack.enter_context(slapd.running_slapd())
            spec.update(ldap_url=server.url, user=slapd.USER_DN, password=slapd.USER_PASSWORD)
            backend = f"OpenLDAP slapd at {server.url} (ldap3 bind as {slapd.USER_DN})"
        else:
            spec["login_address"] = stack.enter_context(embedded_login_service())
            backend = f"embedded login service at {spec['login_address']} (slapd not found)"
        dead = stack.enter_context(blackhole())
        spec["collector"] = collector = f"{dead.host}:{dead.port}"
        sys.stderr.write(
            f"connguard demo: logins ({RATE:g}/s, a new connection each) against {backend};\n"
            f"an APM agent reconnects every second to a dead collector at {collector} with a "
            f"{dead_connect:g} s connect timeout;\nevery process runs on an emulated host "
            f"that allows one connect in SYN_SENT at a time. {len(ROWS)} rows side by side, "
            f"{seconds:g} s each.\n\n"
        )
        results = _run_children(spec, Progress(sys.stderr, seconds, ROWS))
    print()
    print(table(results, seconds, ROWS))
    print()
    code, verdict = _verdict(results)
    print(verdict)
    print(
        f"(finished in {time.monotonic() - started:.0f} s; logins over "
        f"{STALL_SECONDS * 1000:.0f} ms count as stalled)"
    )
    return code


def _run_children(spec: dict[str, Any], progress: Progress) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    procs: list[subprocess.Popen[str]] = []
    readers: list[threading.Thread] = []
    try:
        for row, _ in ROWS:
            child = json.dumps({**spec, "row": row})
            proc = subprocess.Popen(
                [sys.executable, "-m", "connguard", "demo", "--child", child],
                env=_row_env(row, spec["collector"]),
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            procs.append(proc)
            reader = threading.Thread(
                target=_read_row, args=(proc, row, progress, results), daemon=True
            )
            reader.start()
            readers.append(reader)
        for proc in procs:
            try:
                proc.wait(spec["seconds"] + 25)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for reader in readers:
            reader.join(5)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    return results


def _verdict(results: dict[str, dict[str, Any]]) -> tuple[int, str]:
    before, after, lane = (results.get(k) for k in ("no-guard", "connguard", "lane"))
    if before is None or after is None:
        return 1, "The demo could not complete every row."
    text = (
        f"Without connguard the worst login waited {before['max_ms'] / 1000:.1f} s and "
        f"{before['stalled']} of {before['count']} logins stalled; with connguard's defaults "
        f"the worst was {after['max_ms'] / 1000:.1f} s ({after['stalled']} stalled)"
    )
    if lane is not None and lane.get("lane"):
        text += f", and with the lane {lane['max_ms']:.0f} ms ({lane['stalled']} stalled)."
    else:
        text += "; the lane row needs CONNGUARD_MAX_INFLIGHT_CONNECTS support (not in this build)."
    helped = after["max_ms"] < before["max_ms"] and after["stalled"] < before["stalled"]
    return (0 if helped else 1), text
