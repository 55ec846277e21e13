"""Restart lag: how long after a server accepts again does a retrying client reach it?

Run: .venv/bin/python benchmarks/restart_lag.py [--quick] [--rounds N] [--dead SECONDS]

Four everyday patterns (issue 10), each measured without and with connguard, every
round in a fresh subprocess per side so the patch never leaks, the two sides
interleaved (which goes first alternates by round):

* wait-for-port: a server starts listening 1.5 s late; the client polls every 0.1 s.
* restart: a server that served refuses for 2 s, then listens again on the same port;
  the client retries every 0.1 s.
* redis restart: a real redis-server is killed and restarted on the same port ~1 s
  later; redis-py (no retries of its own) PINGs every 0.1 s.
* blackhole back: a loopback blackhole (SYNs dropped) is dead for 45 s (``--quick``:
  8 s), then accepts; the client starts a connect (0.5 s timeout) every 0.5 s. The
  guarded side runs with a 0.3 s connect deadline, so that connguard's deadline, not
  the caller's timeout, ends the dead connects and the circuit opens. Both sides of
  a round run at the same time (the row is sleep-bound).

The lag is "client reached it" minus "server accepts again": the moment listen()
returned, or for redis-server the first moment a raw (unguarded) connect, polled
every 2 ms, got through. The guarded side reads ``CONNGUARD_*`` from the
environment. Everything stays on 127.0.0.1. Prints a table (median and max over
the rounds) and writes ``docs/benchmarks/restart_lag.json``.
"""

from __future__ import annotations

import _socket
import argparse
import contextlib
import json
import os
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from connguard.testing import reachable, unreserved_port

HOST = "127.0.0.1"
OUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks" / "restart_lag.json"
BLACKHOLE_DEADLINE = {"connect_timeout": 0.3, "min_connect_timeout": 0.3}

SCENARIOS = {
    "wait-for-port": "server starts 1.5 s late; poll every 0.1 s",
    "restart": "served, refuses 2 s, back on the same port; retry every 0.1 s",
    "redis-restart": "redis-server killed, restarted ~1 s later; PING every 0.1 s",
    "blackhole-back": "blackhole dead {dead:g} s, then live; connect every 0.5 s",
}


# -- the child: one scenario, one side ----------------------------------------------------


class _Acceptor:
    """Accepts and closes connections on ``listener`` in a thread until stopped."""

    def __init__(self, listener: socket.socket) -> None:
        self.listener = listener
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            ready, _, _ = select.select([self.listener], [], [], 0.02)
            if ready:
                with contextlib.suppress(OSError):
                    self.listener.accept()[0].close()

    def halt(self) -> None:
        self.stop.set()
        self.thread.join(5)


class _Port:
    """A port we own: bound and refusing, or listening; never free in between."""

    def __init__(self) -> None:
        self.sock = self._bound(0)
        self.address: tuple[str, int] = (HOST, self.sock.getsockname()[1])
        self.acceptor: _Acceptor | None = None
        self.up_at: float | None = None

    @staticmethod
    def _bound(port: int) -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, port))
        return sock

    def serve(self) -> None:
        self.sock.listen(64)
        self.up_at = time.monotonic()
        self.acceptor = _Acceptor(self.sock)

    def refuse(self) -> None:
        if self.acceptor is not None:
            self.acceptor.halt()
            self.acceptor = None
        self.sock.close()
        self.sock = self._bound(self.address[1])
        self.up_at = None

    def close(self) -> None:
        if self.acceptor is not None:
            self.acceptor.halt()
        self.sock.close()


def _is_fast_failure(exc: BaseException | None) -> bool:
    import connguard

    for _ in range(12):
        if exc is None:
            return False
        if isinstance(exc, connguard.EndpointUnavailable):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _poll(attempt: Callable[[], object], interval: float, limit: float) -> dict[str, Any]:
    """Start ``attempt`` every ``interval`` s until one succeeds."""
    attempts = fast = 0
    give_up = time.monotonic() + limit
    while time.monotonic() < give_up:
        started = time.monotonic()
        attempts += 1
        try:
            attempt()
        except Exception as exc:
            fast += _is_fast_failure(exc)
        else:
            return {"reached_at": time.monotonic(), "attempts": attempts, "fast_failures": fast}
        time.sleep(max(0.0, interval - (time.monotonic() - started)))
    return {"reached_at": None, "attempts": attempts, "fast_failures": fast}


def _connect(address: tuple[str, int], timeout: float) -> None:
    socket.create_connection(address, timeout).close()


def _wait_for_port(_: argparse.Namespace) -> dict[str, Any]:
    port = _Port()
    try:
        starter = threading.Timer(1.5, port.serve)
        starter.start()
        result = _poll(lambda: _connect(port.address, 5.0), 0.1, 30.0)
        starter.join()
        return {**result, "up_at": port.up_at}
    finally:
        port.close()


def _restart(_: argparse.Namespace) -> dict[str, Any]:
    port = _Port()
    try:
        port.serve()
        for _ in range(5):
            _connect(port.address, 5.0)
        port.refuse()
        restarter = threading.Timer(2.0, port.serve)
        restarter.start()
        result = _poll(lambda: _connect(port.address, 5.0), 0.1, 30.0)
        restarter.join()
        return {**result, "up_at": port.up_at}
    finally:
        port.close()


class _Redis:
    def __init__(self, executable: str, directory: str) -> None:
        self.executable = executable
        self.directory = directory
        self.port = unreserved_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        self.proc = subprocess.Popen(
            [self.executable, "--port", str(self.port), "--bind", HOST, "--save", "",
             "--appendonly", "no", "--dir", self.directory, "--daemonize", "no",
             "--logfile", os.path.join(self.directory, "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        give_up = time.monotonic() + 10.0
        while time.monotonic() < give_up and self.proc.poll() is None:
            if reachable((HOST, self.port)):
                return time.monotonic()
            time.sleep(0.002)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # by PID
            self.proc.wait(10)
        self.proc = None


def _redis_restart(_: argparse.Namespace) -> dict[str, Any]:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    executable = shutil.which("redis-server") or "/usr/bin/redis-server"
    with tempfile.TemporaryDirectory(prefix="connguard-redis-") as directory:
        server = _Redis(executable, directory)
        server.start()
        client = redis.Redis(
            host=HOST, port=server.port, socket_connect_timeout=5, retry=Retry(NoBackoff(), 0)
        )
        try:
            for _ in range(5):
                client.ping()
            up: dict[str, float] = {}
            killed = threading.Event()

            def restart() -> None:
                server.kill()
                killed.set()
                time.sleep(1.0)
                up["at"] = server.start()

            restarter = threading.Thread(target=restart, daemon=True)
            restarter.start()
            killed.wait(15)
            result = _poll(client.ping, 0.1, 30.0)
            restarter.join(20)
            return {**result, "up_at": up.get("at")}
        finally:
            client.close()
            server.kill()


def _blackhole_back(args: argparse.Namespace) -> dict[str, Any]:
    # A full accept queue drops SYNs (as connguard.testing.blackhole); a second
    # listen() with a real backlog plus an acceptor brings the port back to life.
    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen(0)
    address = (HOST, listener.getsockname()[1])
    fillers = []
    for _ in range(64):
        filler = socket.socket()
        filler.setblocking(False)
        _socket.socket.connect_ex(filler, address)
        _, writable, _ = select.select([], [filler], [], 0.2)
        if writable and filler.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
            fillers.append(filler)
            continue
        filler.close()
        break
    live: dict[str, Any] = {}

    def come_alive() -> None:
        listener.listen(64)
        live["at"] = time.monotonic()
        live["acceptor"] = _Acceptor(listener)

    waker = threading.Timer(args.dead, come_alive)
    waker.start()
    try:
        result = _poll(lambda: _connect(address, 0.5), 0.5, args.dead + 180.0)
    finally:
        waker.cancel()
        waker.join()
        if "acceptor" in live:
            live["acceptor"].halt()
        listener.close()
        for filler in fillers:
            filler.close()
    return {**result, "up_at": live.get("at")}


_RUNNERS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "wait-for-port": _wait_for_port,
    "restart": _restart,
    "redis-restart": _redis_restart,
    "blackhole-back": _blackhole_back,
}


def child(args: argparse.Namespace) -> None:
    if args.guarded:
        import connguard

        overrides = BLACKHOLE_DEADLINE if args.child == "blackhole-back" else {}
        connguard.install(**overrides)
    result = _RUNNERS[args.child](args)
    up, reached = result.pop("up_at"), result.pop("reached_at")
    result["lag"] = None if up is None or reached is None else reached - up
    print(json.dumps(result))


# -- the parent: interleaved rounds, table, JSON -----------------------------------------


def _spawn(scenario: str, guarded: bool, dead: float) -> subprocess.Popen[str]:
    command = [sys.executable, __file__, "--child", scenario, "--dead", str(dead)]
    if guarded:
        command.append("--guarded")
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _collect(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # our own child, by PID
        proc.communicate()
        return {"lag": None, "error": "child timed out"}
    if proc.returncode != 0:
        return {"lag": None, "error": err.strip().splitlines()[-1] if err.strip() else "failed"}
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    lags = [r["lag"] for r in runs if r.get("lag") is not None]
    return {
        "lags": [round(lag, 4) for lag in lags],
        "median": round(statistics.median(lags), 4) if lags else None,
        "max": round(max(lags), 4) if lags else None,
        "unreached": len(runs) - len(lags),
        "fast_failures": [r.get("fast_failures") for r in runs],
        "errors": [r["error"] for r in runs if "error" in r],
    }


def measure(scenario: str, rounds: int, dead: float) -> dict[str, Any]:
    sides: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    timeout = dead + 240.0
    for i in range(rounds):
        order = (False, True) if i % 2 == 0 else (True, False)
        if scenario == "blackhole-back":  # sleep-bound: both sides at once
            procs = [(g, _spawn(scenario, g, dead)) for g in order]
            for guarded, proc in procs:
                sides[guarded].append(_collect(proc, timeout))
        else:
            for guarded in order:
                sides[guarded].append(_collect(_spawn(scenario, guarded, dead), timeout))
        print(f"  {scenario} round {i + 1}/{rounds} done", file=sys.stderr, flush=True)
    return {"without": _summary(sides[False]), "with": _summary(sides[True])}


def _cell(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def table(results: dict[str, Any], dead: float) -> str:
    lines = [
        "| scenario | without: median / max (s) | with connguard: median / max (s) "
        "| fast failures seen (with) |",
        "| --- | --- | --- | --- |",
    ]
    for name, row in results.items():
        if "skipped" in row:
            lines.append(f"| {name} | skipped: {row['skipped']} | | |")
            continue
        without, with_ = row["without"], row["with"]
        fast = ", ".join(str(f) for f in with_["fast_failures"])
        lines.append(
            f"| {name} ({SCENARIOS[name].format(dead=dead)}) "
            f"| {_cell(without['median'])} / {_cell(without['max'])} "
            f"| {_cell(with_['median'])} / {_cell(with_['max'])} | {fast} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="blackhole dead 8 s, fewer rounds")
    parser.add_argument("--rounds", type=int, help="rounds per row (default 5, --quick 3)")
    parser.add_argument("--dead", type=float, help="blackhole-back: seconds dead (45, --quick 8)")
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help="comma-separated subset of the rows"
    )
    parser.add_argument("--json", type=Path, default=OUT, help=f"output (default {OUT})")
    parser.add_argument("--child", choices=list(SCENARIOS), help=argparse.SUPPRESS)
    parser.add_argument("--guarded", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.dead is None:
        args.dead = 8.0 if args.quick else 45.0
    if args.child:
        child(args)
        return 0
    rounds = args.rounds or (3 if args.quick else 5)
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}; known: {', '.join(SCENARIOS)}")
    results: dict[str, Any] = {}
    started = time.monotonic()
    for name in names:
        if name == "redis-restart" and not _redis_available():
            results[name] = {"skipped": "redis-server or redis-py not installed"}
            continue
        # The blackhole row costs a whole outage per round: fewer of them.
        row_rounds = max(1, rounds - 1) if name == "blackhole-back" else rounds
        results[name] = measure(name, row_rounds, args.dead)
    report = {
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quick": args.quick,
        "rounds": rounds,
        "blackhole_dead_seconds": args.dead,
        "blackhole_guarded_settings": BLACKHOLE_DEADLINE,
        "connguard_environment": {
            k: v for k, v in os.environ.items() if k.startswith("CONNGUARD_")
        },
        "wall_seconds": round(time.monotonic() - started, 1),
        "scenarios": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(table(results, args.dead))
    print(f"\n{report['wall_seconds']} s; wrote {args.json}")
    return 0


def _redis_available() -> bool:
    try:
        import redis  # noqa: F401
    except ImportError:
        return False
    return shutil.which("redis-server") is not None or os.access("/usr/bin/redis-server", os.X_OK)


if __name__ == "__main__":
    sys.exit(main())
