"""``connguard demo``: the field incident on loopback, before and after connguard.

Three processes run side by side for ``--seconds`` (default 24), each on an
emulated host that lets one TCP connect be in SYN_SENT at a time
(``connguard.testing.serialized_host(1)``):

* **no guard** — an APM-style agent reconnects every second to a dead collector
  (a loopback blackhole) with Windows' 21 s connect timeout; logins (5 per
  second, a fresh connection each) wait behind every attempt;
* **connguard** — the same process with ``connguard.install()`` and defaults;
* **connguard lane** — plus ``CONNGUARD_MAX_INFLIGHT_CONNECTS=1`` and the
  collector in ``CONNGUARD_BACKGROUND``.

Logins bind to a throw-away OpenLDAP server when ``slapd`` is installed (and
ldap3 is importable), otherwise to an embedded loopback login service that
also takes a fresh TCP connection per login. No root needed; all traffic stays
on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

from ._incident import STALL_SECONDS, Agent, Load, summarize_logins

__all__ = ["run"]

_RATE = 5.0
_ROWS: tuple[tuple[str, str], ...] = (
    ("no-guard", "no guard (the incident)"),
    ("connguard", "connguard, defaults"),
    ("lane", "connguard lane (1 slot, agent in background)"),
)
_SERVICE_REQUEST = b"LOGIN alice alice-secret\n"


# --------------------------------------------------------------------------- #
# the login services
# --------------------------------------------------------------------------- #


class _LoginHandler(socketserver.StreamRequestHandler):
    timeout = 10.0

    def handle(self) -> None:
        with contextlib.suppress(OSError):
            line = self.rfile.readline(256)
            self.wfile.write(b"OK\n" if line == _SERVICE_REQUEST else b"DENIED\n")


class _LoginService(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextlib.contextmanager
def _embedded_login_service() -> Iterator[str]:
    """A loopback login service answering one line per connection; yields ``host:port``."""
    server = _LoginService(("127.0.0.1", 0), _LoginHandler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"{host!s}:{port}"
    finally:
        server.shutdown()
        thread.join(5.0)
        server.server_close()


def _service_login(address: tuple[str, int]) -> None:
    # No timeout, a new connection per login: what the field's login did.
    with socket.create_connection(address) as sock:
        sock.sendall(_SERVICE_REQUEST)
        if sock.makefile("rb").readline(16) != b"OK\n":
            raise PermissionError("login refused")


def _ldap_login(url: str, user: str, password: str) -> None:
    import ldap3

    conn = ldap3.Connection(
        ldap3.Server(url, get_info=ldap3.NONE), user=user, password=password, receive_timeout=30
    )
    try:
        if not conn.bind():
            raise PermissionError("bind refused")
    finally:
        with contextlib.suppress(Exception):
            conn.unbind()


def _slapd_usable() -> bool:
    from . import _slapd

    try:
        import ldap3  # noqa: F401
    except ImportError:
        return False
    return _slapd.available()


# --------------------------------------------------------------------------- #
# one row, in a child process
# --------------------------------------------------------------------------- #


def _child(spec: dict[str, Any], out: IO[str]) -> None:
    from . import _api
    from .testing import serialized_host

    host, _, port = spec["collector"].rpartition(":")
    login: Callable[[], None]
    if spec["service"] == "slapd":
        url, user, password = spec["ldap_url"], spec["user"], spec["password"]

        def login() -> None:
            _ldap_login(url, user, password)
    else:
        s_host, _, s_port = spec["login_address"].rpartition(":")

        def login() -> None:
            _service_login((s_host, int(s_port)))

    def emit(kind: str, **fields: Any) -> None:
        out.write(json.dumps({"type": kind, **fields}) + "\n")
        out.flush()

    login()  # warm up imports, outside the emulator and before install()
    with serialized_host(1):
        gate = None
        if spec["row"] != "no-guard":
            _api.install()  # configured by the CONNGUARD_* variables the parent set
            guard = _api.current_guard()
            gate = None if guard is None else guard.gate
        try:
            origin = time.monotonic()
            agent = Agent((host, int(port)), dead_connect=spec["dead_connect"])
            agent.start(origin)
            load = Load(login, _RATE, spec["seconds"])
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
            # The lane counts only if it really handed out slots in this build.
            lane = gate is not None and getattr(gate, "granted", 0) > 0
            emit(
                "result",
                lane=lane,
                cut_short=sum(a.outcome == "aborted" for a in agent.attempts),
                in_flight=load.in_flight(),
                **summary,
            )
        finally:
            _api.uninstall()


def _tally(load: Load) -> dict[str, Any]:
    samples = load.snapshot()
    waiting = load.in_flight()
    return {
        "done": len(samples),
        "waiting": waiting,
        "stalled": sum(s.latency > STALL_SECONDS for s in samples),
        "worst": max((s.latency for s in samples), default=0.0),
    }


# --------------------------------------------------------------------------- #
# the parent: services, three rows side by side, progress, the table
# --------------------------------------------------------------------------- #


def _row_env(row: str, collector: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNGUARD_")}
    if row == "lane":
        env["CONNGUARD_MAX_INFLIGHT_CONNECTS"] = "1"
        env["CONNGUARD_BACKGROUND"] = collector
    return env


class _Progress:
    """Redraws one line per row on a terminal; prints every few seconds otherwise."""

    def __init__(self, stream: IO[str], seconds: float) -> None:
        self.stream = stream
        self.seconds = seconds
        self.tty = stream.isatty()
        self.state: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.drawn = False
        self.last_print = 0.0

    def update(self, row: str, fields: dict[str, Any]) -> None:
        with self.lock:
            self.state[row] = fields
            now = time.monotonic()
            if self.tty:
                self._draw()
            elif now - self.last_print >= 4.0:
                self.last_print = now
                self._draw()

    def _line(self, row: str, title: str) -> str:
        f = self.state.get(row)
        if f is None:
            return f"  {title:<46} starting"
        t = min(f.get("t", self.seconds), self.seconds)
        bar = "#" * int(20 * t / self.seconds)
        return (
            f"  {title:<46} [{bar:<20}] {t:4.0f}s  logins {f['done']:3d}"
            f" ({f['waiting']:2d} waiting)  stalled {f['stalled']:3d}  worst {f['worst']:5.1f}s"
        )

    def _draw(self) -> None:
        lines = [self._line(row, title) for row, title in _ROWS]
        if self.tty and self.drawn:
            self.stream.write(f"\x1b[{len(lines)}F")
        self.stream.write("".join(line + "\x1b[K\n" if self.tty else line + "\n"
                                  for line in lines))  # fmt: skip
        self.stream.flush()
        self.drawn = True


def _read_row(proc: subprocess.Popen[str], row: str, progress: _Progress,
              results: dict[str, dict[str, Any]]) -> None:  # fmt: skip
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


def _table(results: dict[str, dict[str, Any]], seconds: float) -> str:
    head = f"{'':<46} {'logins':>6} {'p50':>8} {'p99':>8} {'worst':>8} {'stalled':>9} {'failed':>6}"
    lines = [head, "-" * len(head)]
    for row, title in _ROWS:
        r = results.get(row)
        if r is None:
            lines.append(f"{title:<46} (no result: the row failed)")
            continue
        if row == "lane" and not r.get("lane"):
            title = "connguard lane (lane not in this build)"
        worst = f"{r['max_ms'] / 1000:.2f}s"
        if r.get("cut_short") and r["max_ms"] >= 1000 * (seconds - 2):
            worst = ">=" + worst.replace(".00", "")  # still waiting when the row ended
        share = f"{r['stalled']} ({100 * r['stalled'] / max(1, r['count']):.0f}%)"
        lines.append(
            f"{title:<46} {r['count']:>6} {r['p50_ms'] / 1000:>7.2f}s {r['p99_ms'] / 1000:>7.2f}s"
            f" {worst:>8} {share:>9} {r['failed']:>6}"
        )
    return "\n".join(lines)


def run(argv: list[str]) -> int:
    """Run the demo; return the process exit status (0 when connguard helped)."""
    parser = argparse.ArgumentParser(
        prog="connguard demo",
        description="The field incident on loopback: logins stalling behind a dead APM "
        "collector on a host that serializes connects, before and after connguard.",
    )
    parser.add_argument("--seconds", type=float, default=24.0, help="length of each row")
    parser.add_argument("--dead-connect", type=float, default=21.0,
                        help="the agent's connect timeout (Windows: 21 s)")  # fmt: skip
    parser.add_argument("--login", choices=("auto", "slapd", "embedded"), default="auto",
                        help="login backend: OpenLDAP (slapd) or the embedded service")  # fmt: skip
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(json.loads(args.child), sys.stdout)
        return 0
    if not 3.0 <= args.seconds <= 50.0:
        parser.error("--seconds must be between 3 and 50 (the demo stays under a minute)")
    service = args.login
    if service == "auto":
        service = "slapd" if _slapd_usable() else "embedded"
    elif service == "slapd" and not _slapd_usable():
        parser.error("slapd (and ldap3) not found; use --login embedded")
    return _run_rows(args, service)


def _run_rows(args: argparse.Namespace, service: str) -> int:
    from . import _slapd
    from .testing import blackhole

    err = sys.stderr
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        spec: dict[str, Any] = {"seconds": args.seconds, "dead_connect": args.dead_connect,
                                "service": service}  # fmt: skip
        if service == "slapd":
            slapd = stack.enter_context(_slapd.running_slapd())
            spec.update(ldap_url=slapd.url, user=_slapd.USER_DN, password=_slapd.USER_PASSWORD)
            backend = f"OpenLDAP slapd at {slapd.url} (ldap3 bind as {_slapd.USER_DN})"
        else:
            spec["login_address"] = stack.enter_context(_embedded_login_service())
            backend = f"embedded login service at {spec['login_address']} (slapd not found)"
        dead = stack.enter_context(blackhole())
        collector = f"{dead.host}:{dead.port}"
        spec["collector"] = collector
        err.write(
            f"connguard demo: logins ({_RATE:g}/s, a new connection each) against {backend};\n"
            f"an APM agent reconnects every second to a dead collector at {collector} with a "
            f"{args.dead_connect:g} s connect timeout;\nevery process runs on an emulated host "
            f"that allows one connect in SYN_SENT at a time. {len(_ROWS)} rows side by side, "
            f"{args.seconds:g} s each.\n\n"
        )
        progress = _Progress(err, args.seconds)
        results: dict[str, dict[str, Any]] = {}
        procs: list[subprocess.Popen[str]] = []
        readers: list[threading.Thread] = []
        try:
            for row, _ in _ROWS:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "connguard._demo", "--child",
                     json.dumps({**spec, "row": row})],
                    env=_row_env(row, collector), stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL, text=True,
                )  # fmt: skip
                procs.append(proc)
                reader = threading.Thread(
                    target=_read_row, args=(proc, row, progress, results), daemon=True
                )
                reader.start()
                readers.append(reader)
            for proc in procs:
                try:
                    proc.wait(args.seconds + 25)
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
    print()
    print(_table(results, args.seconds))
    print()
    verdict = _verdict(results)
    print(verdict[1])
    print(f"(finished in {time.monotonic() - started:.0f} s; logins over "
          f"{STALL_SECONDS * 1000:.0f} ms count as stalled)")  # fmt: skip
    return verdict[0]


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


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
