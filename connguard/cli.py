"""The ``connguard`` command line: doctor, check, config, run, status, demo.

Uses only connguard's public API (``connguard.testing`` included, for doctor's
loopback targets). ``format_status(records)`` is public: an application can
render ``connguard.status()`` with it, e.g. on an admin page.

Exit codes are listed per command in ``docs/cli.md`` and in ``--help``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import ipaddress
import json
import logging
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import connguard

__all__ = ["format_status", "main"]

EXIT_OK = 0
EXIT_FAIL = 1  # doctor: serialized; check: not reachable
EXIT_USAGE = 2  # bad arguments or configuration (argparse uses 2 as well)
EXIT_INCONCLUSIVE = 3  # doctor: the targets did not behave as dead/live

_BOOTSTRAP_DIR = Path(__file__).resolve().parent / "_bootstrap"


# --------------------------------------------------------------------------- #
# small parsers shared by the commands
# --------------------------------------------------------------------------- #


def _host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` for argparse; a bad value is a usage error."""
    text = text.strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
    elif text.count(":") == 1:
        host, sep, port_text = text.partition(":")
    else:
        sep, host, port_text = "", "", ""
    if not sep or not host:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not HOST:PORT (write IPv6 addresses as [::1]:443)"
        )
    try:
        port = int(port_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: port {port_text!r} is not a number") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"{text!r}: port {port} is outside 1..65535")
    return host, port


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0.05 <= value <= 600:
        raise argparse.ArgumentTypeError(f"{text} s is outside 0.05..600")
    return value


def _hold_seconds(text: str) -> float:
    value = _seconds(text)
    if value < 0.3:  # the wait must stand out from a loopback connect and the 0.2 s settle
        raise argparse.ArgumentTypeError(f"{text} s is below doctor's minimum of 0.3 s")
    return value


def _label(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _resolve(host: str, port: int, limit: int = 8) -> list[tuple[socket.AddressFamily, str]]:
    """Distinct (family, address) pairs of ``host``, in the resolver's order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: dict[tuple[socket.AddressFamily, str], None] = {}
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            seen.setdefault((family, str(sockaddr[0])), None)
    return list(seen)[:limit]


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def _print_json(obj: Any, out: TextIO) -> None:
    out.write(json.dumps(obj, indent=2) + "\n")


# --------------------------------------------------------------------------- #
# status
# --------------------------------------------------------------------------- #

_STATUS_COLUMNS = (
    ("endpoint", "endpoint"),
    ("state", "state"),
    ("priority", "priority"),
    ("failures", "fails"),
    ("connect_budget", "budget"),
    ("srtt", "srtt"),
    ("retry_after", "retry in"),
    ("successes", "ok"),
    ("failures_total", "failed"),
    ("fast_failures", "fast-failed"),
    ("openings", "opened"),
    ("last_error", "last error"),
)


def _status_cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key in ("connect_budget", "srtt", "retry_after") and isinstance(value, int | float):
        return _ms(float(value))
    return str(value)


def format_status(records: Iterable[Mapping[str, Any]]) -> str:
    """Render ``connguard.status()`` records as a plain-text table (one line per endpoint).

    Durations are shown in ms or s; a missing or None value shows as ``-``.
    Returns a one-line message when there are no records.
    """
    rows = [[_status_cell(key, rec.get(key)) for key, _ in _STATUS_COLUMNS] for rec in records]
    if not rows:
        return "no guarded endpoint seen yet"
    header = [title for _, title in _STATUS_COLUMNS]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines)


def _cmd_status(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.file is None:
        records: Any = connguard.status()
        if not connguard.is_installed():
            err.write(
                "connguard status: connguard is not installed in this process; status is "
                "per process. Pipe your application's json.dumps(connguard.status()) into "
                "`connguard status -`, or call connguard.cli.format_status() in it.\n"
            )
    else:
        try:
            text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
            records = json.loads(text)
        except (OSError, ValueError) as exc:
            err.write(f"connguard status: cannot read {args.file}: {exc}\n")
            return EXIT_USAGE
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            err.write("connguard status: expected a JSON list of status records\n")
            return EXIT_USAGE
    if args.json:
        _print_json(records, out)
    else:
        out.write(format_status(records) + "\n")
    return EXIT_OK


# --------------------------------------------------------------------------- #
# config
# --------------------------------------------------------------------------- #


def _variable(field_name: str) -> str:
    # Every setting's variable is CONNGUARD_ + its field name (tests check this
    # against Config.sources(), which knows the real names).
    return "CONNGUARD_" + field_name.upper()


def _config_text(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        if not value:
            return "(none)"
        return ", ".join(_override_text(v) if isinstance(v, dict) else str(v) for v in value)
    return str(value)


def _override_text(override: Mapping[str, Any]) -> str:
    parts = [str(override.get("pattern"))]
    if override.get("connect_timeout") is not None:
        parts.append(f"connect_timeout={override['connect_timeout']:g}")
    if override.get("precheck") is not None:
        parts.append(f"precheck={override['precheck']}")
    if override.get("background") is not None:
        parts.append("priority=" + ("background" if override["background"] else "foreground"))
    return " ".join(parts)


def _cmd_config(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    environ = dict(os.environ)
    try:
        config = connguard.Config.from_env(environ)
    except connguard.ConfigError as exc:
        err.write(f"connguard config: invalid configuration: {exc}\n")
        if args.json:
            _print_json({"valid": False, "error": str(exc)}, out)
        return EXIT_USAGE
    values = config.as_dict()
    sources = config.sources(environ)
    known = {_variable(name) for name in values}
    unknown = sorted(n for n in environ if n.startswith("CONNGUARD_") and n not in known)
    settings = [
        {"setting": name, "variable": _variable(name), "value": value, "source": sources[name]}
        for name, value in values.items()
    ]
    if args.json:
        _print_json({"valid": True, "settings": settings, "unknown_variables": unknown}, out)
        return EXIT_OK
    out.write("connguard configuration (read from the environment):\n")
    width = max(len(s["variable"]) for s in settings)
    for s in settings:
        out.write(f"  {s['variable']:<{width}}  {s['source']:<11}  {_config_text(s['value'])}\n")
    for name in unknown:
        out.write(f"  {name}: unknown variable, ignored\n")
    out.write("valid.\n")
    return EXIT_OK


# --------------------------------------------------------------------------- #
# run
# --------------------------------------------------------------------------- #


def _child_environ(environ: Mapping[str, str]) -> dict[str, str]:
    env = dict(environ)
    entries = [e for e in env.get("PYTHONPATH", "").split(os.pathsep) if e]
    bootstrap = str(_BOOTSTRAP_DIR)
    env["PYTHONPATH"] = os.pathsep.join([bootstrap, *(e for e in entries if e != bootstrap)])
    return env


def _cmd_run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        err.write("connguard run: give a command, e.g. `connguard run -- python app.py`\n")
        return EXIT_USAGE
    try:
        # Fail here, loudly, rather than let the child start unguarded.
        connguard.Config.from_env(os.environ)
    except connguard.ConfigError as exc:
        err.write(f"connguard run: invalid configuration: {exc}\n")
        return EXIT_USAGE
    env = _child_environ(os.environ)
    out.flush()
    err.flush()
    try:
        if sys.platform == "win32":  # no real exec there: wait and pass the code on
            return subprocess.call(command, env=env)
        os.execvpe(command[0], command, env)
    except FileNotFoundError:
        err.write(f"connguard run: command not found: {command[0]}\n")
        return 127
    except PermissionError:
        err.write(f"connguard run: permission denied: {command[0]}\n")
        return 126
    return EXIT_OK  # not reached: execvpe does not return


# --------------------------------------------------------------------------- #
# demo
# --------------------------------------------------------------------------- #


def _cmd_demo(argv: list[str], err: TextIO) -> int:
    import importlib

    try:
        demo = importlib.import_module("connguard._demo")
    except ModuleNotFoundError as exc:
        if exc.name != "connguard._demo":
            raise
        err.write("connguard demo: the demo is not part of this installation (connguard._demo)\n")
        return EXIT_USAGE
    code: int = demo.run(argv)
    return code


# --------------------------------------------------------------------------- #
# check
# --------------------------------------------------------------------------- #

_UNREACHABLE = frozenset(
    {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN, errno.EADDRNOTAVAIL}
)


@dataclass
class _Probe:
    """One reachability test of one address."""

    address: str
    verdict: str
    seconds: float | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "verdict": self.verdict,
            "seconds": None if self.seconds is None else round(self.seconds, 6),
            "error": self.error,
        }


def _verdict_of(exc: OSError) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer (timeout)"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if exc.errno in _UNREACHABLE:
        return "unreachable"
    return "error"


def _tcp_probe(family: socket.AddressFamily, address: str, port: int, timeout: float) -> _Probe:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    started = time.monotonic()
    try:
        sock.connect((address, port))
    except OSError as exc:
        return _Probe(address, _verdict_of(exc), time.monotonic() - started, _error_text(exc))
    finally:
        sock.close()
    return _Probe(address, "reachable", time.monotonic() - started)


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _udp_echo_probe(
    family: socket.AddressFamily, address: str, port: int, timeout: float
) -> _Probe:
    """Send one datagram and wait for the same bytes back (RFC 862 echo)."""
    token = os.urandom(16)
    sock = socket.socket(family, socket.SOCK_DGRAM)
    started = time.monotonic()
    try:
        sock.connect((address, port))  # connected: an ICMP port-unreachable surfaces as refused
        sock.send(b"connguard check " + token)
        while True:
            left = timeout - (time.monotonic() - started)
            if left <= 0:
                raise TimeoutError("no echo")
            sock.settimeout(left)
            if sock.recv(2048).endswith(token):
                return _Probe(address, "answered", time.monotonic() - started)
    except OSError as exc:
        return _Probe(address, _verdict_of(exc), time.monotonic() - started, _error_text(exc))
    finally:
        sock.close()


def _ping_group_range() -> str | None:
    try:
        return Path("/proc/sys/net/ipv4/ping_group_range").read_text().strip()
    except OSError:
        return None


def _icmp_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _icmp_probe(family: socket.AddressFamily, address: str, timeout: float) -> _Probe:
    """One ICMP echo through an unprivileged datagram ICMP socket (no raw socket)."""
    v6 = family == socket.AF_INET6
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    request, reply = (128, 129) if v6 else (8, 0)
    try:
        sock = socket.socket(family, socket.SOCK_DGRAM, proto)
    except PermissionError as exc:
        groups = _ping_group_range()
        groups = None if groups is None else " ".join(groups.split())
        return _Probe(
            address,
            "not permitted",
            error=(
                f"{_error_text(exc)}: this OS does not let this user send ICMP echo without "
                "privileges; unprivileged ICMP sockets need the process's group inside "
                f"net.ipv4.ping_group_range (here {groups!r}); widen it with sysctl, "
                "or use --precheck udp-echo"
                if groups is not None
                else f"{_error_text(exc)}: this OS does not allow unprivileged ICMP echo"
            ),
        )
    except OSError as exc:
        return _Probe(address, "error", error=_error_text(exc))
    token = os.urandom(16)
    header = struct.pack("!BBHHH", request, 0, 0, 0, 1)
    checksum = 0 if v6 else _icmp_checksum(header + token)  # the kernel fills ICMPv6's
    packet = struct.pack("!BBHHH", request, 0, checksum, 0, 1) + token
    started = time.monotonic()
    try:
        sock.connect((address, 0))
        sock.send(packet)
        while True:
            left = timeout - (time.monotonic() - started)
            if left <= 0:
                raise TimeoutError("no echo reply")
            sock.settimeout(left)
            data = sock.recv(2048)
            if not v6 and data and data[0] >> 4 == 4:  # macOS includes the IP header
                data = data[(data[0] & 0x0F) * 4 :]
            if data[:1] == bytes([reply]) and data.endswith(token):
                return _Probe(address, "answered", time.monotonic() - started)
    except OSError as exc:
        return _Probe(address, _verdict_of(exc), time.monotonic() - started, _error_text(exc))
    finally:
        sock.close()


def _precheck_arg(text: str) -> tuple[str, int | None]:
    kind, _, port_text = text.strip().lower().partition(":")
    if kind == "udp-echo":
        if not port_text:
            return kind, 7
        try:
            port = int(port_text)
        except ValueError:
            port = 0
        if 0 < port < 65536:
            return kind, port
        raise argparse.ArgumentTypeError(f"{text!r}: UDP port must be 1..65535")
    if kind in ("tcp", "icmp") and not port_text:
        return kind, None
    raise argparse.ArgumentTypeError(f"{text!r}: accepted: tcp, udp-echo[:PORT], icmp")


def _cmd_check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    host, port = args.endpoint
    kind, echo_port = args.precheck
    report: dict[str, Any] = {"endpoint": _label(host, port), "timeout": args.timeout}
    try:
        addresses = _resolve(host, port)
    except OSError as exc:
        report.update(verdict="unresolved", error=_error_text(exc), addresses=[])
        addresses = []
    precheck: list[_Probe] = []
    if kind == "udp-echo":
        assert echo_port is not None
        precheck = [_udp_echo_probe(f, a, echo_port, args.timeout) for f, a in addresses]
    elif kind == "icmp":
        precheck = [_icmp_probe(f, a, args.timeout) for f, a in addresses]
    probes = [_tcp_probe(f, a, port, args.timeout) for f, a in addresses]
    if addresses:
        reachable = [p for p in probes if p.verdict == "reachable"]
        report["verdict"] = "reachable" if reachable else probes[0].verdict
        report["addresses"] = [p.as_dict() for p in probes]
    if kind != "tcp":
        label = f"udp-echo:{echo_port}" if kind == "udp-echo" else kind
        report["precheck"] = {"kind": label, "results": [p.as_dict() for p in precheck]}
    if args.json:
        _print_json(report, out)
    else:
        _write_check(report, probes, precheck, out)
    return EXIT_OK if report["verdict"] == "reachable" else EXIT_FAIL


def _write_check(
    report: Mapping[str, Any], probes: list[_Probe], precheck: list[_Probe], out: TextIO
) -> None:
    out.write(f"connguard check {report['endpoint']} (timeout {report['timeout']:g} s)\n")
    if report["verdict"] == "unresolved":
        out.write(f"  cannot resolve the host: {report['error']}\n")
    kind = report.get("precheck", {}).get("kind")
    pres: list[_Probe | None] = list(precheck) if precheck else [None] * len(probes)
    for tcp, pre in zip(probes, pres, strict=True):
        line = f"  {tcp.address}: tcp connect {tcp.verdict}, {_ms(tcp.seconds)}"
        if tcp.error and tcp.verdict != "no answer (timeout)":
            line += f" ({tcp.error})"
        out.write(line + "\n")
        if pre is not None:
            line = f"  {pre.address}: pre-check {kind} {pre.verdict}"
            if pre.seconds is not None:
                line += f", {_ms(pre.seconds)}"
            if pre.verdict == "not permitted" and pre.error:
                line += f"\n    {pre.error}"
            out.write(line + "\n")
    dead = [p for p in probes if p.verdict != "reachable"]
    if len(probes) > 1 and dead and len(dead) < len(probes):
        out.write(
            f"  note: {len(dead)} of {len(probes)} addresses did not connect; a client that "
            "tries them in order (socket.create_connection) pays their timeout first\n"
        )
    out.write(f"verdict: {report['verdict']}\n")


# --------------------------------------------------------------------------- #
# doctor
# --------------------------------------------------------------------------- #

_SETTLE = 0.2  # lets the dead connects' SYNs leave (and fill the slots) before the live one
_RELEASE_CONFIRMS = 0.5  # a live connect going through this soon after the abort was held
_ABORT_WINDOW = 2.0  # bound on tearing a round down
_EXTRA_SOCKET_TIMEOUT = 5.0  # our sockets' own bound beyond the hold: we abort them first


class _Connect:
    """One blocking connect running in its own thread, abortable with shutdown()."""

    def __init__(self, family: socket.AddressFamily, address: tuple[str, int], timeout: float):
        self.address = address
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.started = threading.Event()
        self.finished = threading.Event()
        self.t0 = 0.0
        self.t1 = 0.0
        self.error: OSError | None = None
        self.thread = threading.Thread(target=self._run, name="connguard-doctor", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.t0 = time.monotonic()
        self.started.set()
        try:
            self.sock.connect(self.address)
        except OSError as exc:
            self.error = exc
        finally:
            self.t1 = time.monotonic()
            self.finished.set()

    @property
    def elapsed(self) -> float | None:
        return self.t1 - self.t0 if self.finished.is_set() else None

    def abort(self) -> None:
        # shutdown() aborts a connect in SYN_SENT at once; close() from here would not.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.thread.join(_ABORT_WINDOW)
        self.sock.close()


def _abort_all(connects: Sequence[_Connect]) -> None:
    """Abort until every connect returned; a connect still queued starts later, so repeat."""
    end = time.monotonic() + _ABORT_WINDOW
    while time.monotonic() < end:
        pending = [c for c in connects if not c.finished.is_set()]
        if not pending:
            return
        for c in pending:
            c.abort()
        time.sleep(0.01)


@dataclass
class _Round:
    dead_connects: int
    live_seconds: float | None = None
    waited: bool = False
    released_after_abort: float | None = None
    live_error: str | None = None

    @property
    def confirmed(self) -> bool:
        """The live connect went through right when the dead ones were aborted."""
        return self.released_after_abort is not None and (
            self.released_after_abort < _RELEASE_CONFIRMS
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "dead_connects": self.dead_connects,
            "live_connect_seconds": None
            if self.live_seconds is None
            else round(self.live_seconds, 6),
            "waited": self.waited,
            "released_after_abort_seconds": None
            if self.released_after_abort is None
            else round(self.released_after_abort, 6),
            "live_error": self.live_error,
        }


class _Inconclusive(Exception):
    """The targets did not behave as a dead and a live endpoint."""


class _Progress:
    """A one-line progress display on stderr, only when stderr is a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.enabled = stream.isatty()

    def show(self, text: str) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[K" + text)
            self.stream.flush()

    def clear(self) -> None:
        self.show("")


@dataclass
class _Doctor:
    dead: tuple[socket.AddressFamily, tuple[str, int]]
    live: tuple[socket.AddressFamily, tuple[str, int]]
    hold: float
    progress: _Progress
    threshold: float = 0.0
    baseline: list[float] = field(default_factory=list)

    def connect(self, target: tuple[socket.AddressFamily, tuple[str, int]]) -> _Connect:
        return _Connect(target[0], target[1], self.hold + _EXTRA_SOCKET_TIMEOUT)

    def measure_baseline(self, count: int = 3) -> None:
        """The live connect alone, so that a slow live target is not taken for a wait."""
        for _ in range(count):
            live = self.connect(self.live)
            finished = live.finished.wait(self.hold)
            live.abort()
            live.close()
            if not finished or live.error is not None:
                why = _error_text(live.error) if live.error else f"no answer in {self.hold:g} s"
                raise _Inconclusive(f"the live target {_label(*self.live[1])} failed: {why}")
            assert live.elapsed is not None
            self.baseline.append(live.elapsed)
        self.threshold = min(0.8 * self.hold, max(0.25, 3 * max(self.baseline) + 0.05))

    def run_round(self, k: int, of: int) -> _Round:
        result = _Round(k)
        dead = [self.connect(self.dead) for _ in range(k)]
        live: _Connect | None = None
        try:
            for c in dead:
                c.started.wait(1.0)
            time.sleep(_SETTLE)
            answered = [c for c in dead if c.finished.is_set()]
            if answered:
                what = _error_text(answered[0].error) if answered[0].error else "it connected"
                raise _Inconclusive(
                    f"the dead target {_label(*self.dead[1])} answered ({what}); give one whose "
                    "SYNs are dropped (a firewalled port, a powered-off host)"
                )
            live = self.connect(self.live)
            while not live.finished.wait(0.1):
                waited = time.monotonic() - live.t0
                if waited >= self.hold:
                    break
                self.progress.show(
                    f"doctor: {k}/{of} dead connect(s) pending, live connect "
                    f"waiting {waited:.1f} s / {self.hold:g} s"
                )
            held = not live.finished.is_set()
            aborted_at = time.monotonic()
            _abort_all(dead)
            if held:
                live.finished.wait(_ABORT_WINDOW)
                if live.finished.is_set():
                    result.released_after_abort = max(0.0, live.t1 - aborted_at)
            result.live_seconds = live.elapsed
            if live.error is not None:
                result.live_error = _error_text(live.error)
            result.waited = held or (
                result.live_seconds is not None and result.live_seconds > self.threshold
            )
            if result.live_seconds is None or result.live_error is not None:
                raise _Inconclusive(
                    f"the live target {_label(*self.live[1])} did not connect even after the "
                    f"dead connects were aborted ({result.live_error or 'still pending'})"
                )
            return result
        finally:
            self.progress.clear()
            _abort_all(dead if live is None else [*dead, live])
            for c in dead if live is None else [*dead, live]:
                c.close()

    def find_slots(self, max_slots: int, rounds: list[_Round]) -> int | None:
        """The smallest number of pending dead connects that makes a live connect wait."""
        for k in range(1, max_slots + 1):
            result = self.run_round(k, max_slots)
            rounds.append(result)
            if result.waited and not result.confirmed:
                # A wait that the abort did not end may be a slow live connect: repeat once.
                result = self.run_round(k, max_slots)
                rounds.append(result)
            if result.waited:
                return k
        return None


def _doctor_target(
    value: tuple[str, int], role: str
) -> tuple[socket.AddressFamily, tuple[str, int]]:
    host, port = value
    try:
        family, address = _resolve(host, port, limit=1)[0]
    except (OSError, IndexError) as exc:
        raise _Inconclusive(f"cannot resolve the {role} target {host}: {exc}") from None
    return family, (address, port)


def _recommendation(serialized: bool, slots: int | None) -> tuple[dict[str, str], list[str]]:
    if not serialized:
        return {"CONNGUARD_MAX_INFLIGHT_CONNECTS": "0"}, [
            "no connect lane needed; connguard's defaults (fail fast, bounded connects) "
            "still keep a dead endpoint from stalling callers"
        ]
    return {"CONNGUARD_MAX_INFLIGHT_CONNECTS": str(slots)}, [
        "name the endpoints that may wait (APM collector, metrics) in CONNGUARD_BACKGROUND, "
        "e.g. CONNGUARD_BACKGROUND=apm.example:8200, so they yield the slot to user requests",
        "if those hosts answer UDP echo or ICMP, CONNGUARD_PRECHECK=udp-echo or icmp checks "
        "their recovery without sending a SYN",
    ]


def _cmd_doctor(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if connguard.is_installed():
        # doctor measures the host, not connguard: take it out of the way.
        connguard.uninstall()
        err.write("connguard doctor: connguard was installed in this process; uninstalled it\n")
    from connguard import testing

    report: dict[str, Any] = {"serialized": False, "slots": None, "conclusive": False}
    rounds: list[_Round] = []
    notes: list[str] = []
    with contextlib.ExitStack() as stack:
        try:
            if args.dead is None:
                hole = stack.enter_context(testing.blackhole())
                dead = (socket.AF_INET, hole.address)
            else:
                dead = _doctor_target(args.dead, "dead")
            if args.live is None:
                server = stack.enter_context(testing.tcp_server())
                live = (socket.AF_INET, server.address)
            else:
                live = _doctor_target(args.live, "live")
            if args.testing_serialized_slots:
                stack.enter_context(testing.serialized_host(args.testing_serialized_slots))
                notes.append(
                    f"testing aid: serialized host emulated in this process with "
                    f"{args.testing_serialized_slots} slot(s)"
                )
            report["targets"] = {
                "dead": _label(*dead[1]),
                "live": _label(*live[1]),
                "loopback": _is_loopback(dead[1][0]) or _is_loopback(live[1][0]),
            }
            doctor = _Doctor(dead, live, args.timeout, _Progress(err))
            doctor.measure_baseline()
            slots = doctor.find_slots(args.max_slots, rounds)
            report.update(serialized=slots is not None, slots=slots, conclusive=True)
            report["threshold_seconds"] = round(doctor.threshold, 6)
            report["baseline_connect_seconds"] = [round(b, 6) for b in doctor.baseline]
        except _Inconclusive as exc:
            report["error"] = str(exc)
    report["rounds"] = [r.as_dict() for r in rounds]
    if report.get("targets", {}).get("loopback") and not report["serialized"]:
        notes.append(
            "a target is on loopback: a host's security tool may not filter loopback, so "
            "'not serialized' here is not proof; rerun with --dead and --live on real addresses"
        )
    env, hints = _recommendation(report["serialized"], report["slots"])
    report["recommended_env"] = env if report["conclusive"] else {}
    report["hints"] = hints if report["conclusive"] else []
    report["notes"] = notes
    if args.json:
        _print_json(report, out)
    else:
        _write_doctor(report, out)
    if not report["conclusive"]:
        return EXIT_INCONCLUSIVE
    return EXIT_FAIL if report["serialized"] else EXIT_OK


def _write_doctor(report: Mapping[str, Any], out: TextIO) -> None:
    out.write("connguard doctor: does this host make a connect wait behind another?\n")
    targets = report.get("targets")
    if targets:
        out.write(f"  dead target {targets['dead']}, live target {targets['live']}\n")
    baseline = report.get("baseline_connect_seconds")
    if baseline:
        out.write(f"  live connect alone: {_ms(max(baseline))} (slowest of {len(baseline)})\n")
    for r in report["rounds"]:
        line = f"  {r['dead_connects']} dead connect(s) pending: live connect "
        if r["waited"]:
            line += f"WAITED {_ms(r['live_connect_seconds'])}"
            if r["released_after_abort_seconds"] is not None:
                line += (
                    f", went through {_ms(r['released_after_abort_seconds'])} after the dead "
                    "connects were aborted"
                )
        else:
            line += f"{_ms(r['live_connect_seconds'])}, not delayed"
        out.write(line + "\n")
    if not report["conclusive"]:
        out.write(f"verdict: inconclusive: {report.get('error')}\n")
    elif report["serialized"]:
        out.write(
            f"verdict: SERIALIZED with {report['slots']} slot(s): a new connect waits while "
            f"{report['slots']} connect(s) of the process are unanswered, so a dead endpoint "
            "stalls every new connection of the process\n"
        )
    else:
        tried = max((r["dead_connects"] for r in report["rounds"]), default=0)
        out.write(f"verdict: not serialized (no wait with up to {tried} pending connects)\n")
    for note in report["notes"]:
        out.write(f"note: {note}\n")
    if report["recommended_env"]:
        out.write("recommended environment:\n")
        for name, value in report["recommended_env"].items():
            out.write(f"  {name}={value}\n")
    for hint in report["hints"]:
        out.write(f"hint: {hint}\n")


# --------------------------------------------------------------------------- #
# argument parsing and main
# --------------------------------------------------------------------------- #

_DOCTOR_EPILOG = """\
The experiment: start blocking connects to the dead target (SYNs that are never
answered), then a connect to the live target, and see whether it waits behind
them; with k = 1, 2, ... pending dead connects, the first k that makes it wait is
the number of connect slots. Without targets it uses a loopback blackhole and a
loopback listener. connguard is not installed while it measures.

exit codes: 0 not serialized, 1 serialized, 2 usage error,
            3 inconclusive (the dead target answered or the live one did not)
"""

_CHECK_EPILOG = """\
Connects to each address HOST resolves to (at most 8) and reports the verdict:
reachable, refused, no answer (timeout), unreachable. --precheck udp-echo or icmp
also runs that pre-check (it sends no SYN) and reports it next to the connect.
icmp uses an unprivileged ICMP socket; Linux allows it only for groups inside
net.ipv4.ping_group_range.

exit codes: 0 reachable (at least one address), 1 not reachable, 2 usage error
"""

_CONFIG_EPILOG = """\
Prints every setting with its CONNGUARD_* variable, its effective value and its
source (default or environment), and validates them as connguard.install() would.

exit codes: 0 valid, 2 invalid (the message names the variable and what it accepts)
"""

_RUN_EPILOG = """\
Runs CMD with connguard installed at interpreter start in every Python process it
starts, without changing its code: a sitecustomize on PYTHONPATH installs it, after
running the program's own sitecustomize. Configure it with CONNGUARD_* variables.
Python started with -I, -E or -S skips it.

exit codes: CMD's own exit code; 2 invalid configuration, 126/127 CMD not runnable
example: CONNGUARD_MAX_INFLIGHT_CONNECTS=1 connguard run -- python app.py
"""

_STATUS_EPILOG = """\
connguard keeps its state per process: without FILE this shows the current
process's (usually empty). Feed it json.dumps(connguard.status()) from your
application, e.g.: curl -s http://app/admin/connguard | connguard status -

exit codes: 0 shown, 2 unreadable input
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="connguard",
        description="Keep applications from stalling behind dead network endpoints.",
        epilog="Run `connguard COMMAND --help` for a command's options and exit codes.",
    )
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command_name", metavar="COMMAND", required=True)
    raw = argparse.RawDescriptionHelpFormatter

    doctor = commands.add_parser(
        "doctor",
        help="does this host serialize connect attempts? (the two-connect experiment)",
        description="Measure whether a connect waits behind unanswered connects of the "
        "same process, estimate the number of slots and recommend CONNGUARD_* settings.",
        epilog=_DOCTOR_EPILOG,
        formatter_class=raw,
    )
    doctor.add_argument(
        "--dead",
        type=_host_port,
        metavar="HOST:PORT",
        help="an endpoint that drops SYNs (default: a loopback blackhole)",
    )
    doctor.add_argument(
        "--live",
        type=_host_port,
        metavar="HOST:PORT",
        help="an endpoint that accepts connects (default: a loopback listener)",
    )
    doctor.add_argument(
        "--timeout",
        type=_hold_seconds,
        default=2.0,
        metavar="S",
        help="how long a live connect may wait behind the dead ones before the dead "
        "connects are aborted (default 2)",
    )
    doctor.add_argument(
        "--max-slots",
        type=int,
        choices=range(1, 17),
        default=4,
        metavar="N",
        help="try up to N concurrent dead connects, 1..16 (default 4)",
    )
    doctor.add_argument("--json", action="store_true", help="print one JSON object")
    # Testing aid (docs/cli.md): emulate a serialized host inside this process.
    doctor.add_argument(
        "--testing-serialized-slots", type=int, choices=range(17), default=0, help=argparse.SUPPRESS
    )
    doctor.set_defaults(handler=_cmd_doctor)

    check = commands.add_parser(
        "check",
        help="is HOST:PORT reachable? connect time and verdict",
        description="Check whether HOST:PORT accepts a TCP connect, and how fast.",
        epilog=_CHECK_EPILOG,
        formatter_class=raw,
    )
    check.add_argument("endpoint", type=_host_port, metavar="HOST:PORT")
    check.add_argument(
        "--precheck",
        type=_precheck_arg,
        default=("tcp", None),
        metavar="tcp|udp-echo[:PORT]|icmp",
        help="also run this pre-check (udp-echo: default port 7); default tcp only",
    )
    check.add_argument(
        "--timeout",
        type=_seconds,
        default=3.0,
        metavar="S",
        help="connect and pre-check timeout in seconds (default 3)",
    )
    check.add_argument("--json", action="store_true", help="print one JSON object")
    check.set_defaults(handler=_cmd_check)

    config = commands.add_parser(
        "config",
        help="print and validate the effective configuration",
        description="Show the configuration connguard.install() would use here.",
        epilog=_CONFIG_EPILOG,
        formatter_class=raw,
    )
    config.add_argument("--json", action="store_true", help="print one JSON object")
    config.set_defaults(handler=_cmd_config)

    run = commands.add_parser(
        "run",
        help="run a Python program with connguard installed (no code change)",
        description="Run CMD with connguard installed in its Python processes.",
        usage="connguard run [-h] -- CMD [ARGS ...]",
        epilog=_RUN_EPILOG,
        formatter_class=raw,
    )
    run.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        metavar="-- CMD [ARGS ...]",
        help="the command to run, after --",
    )
    run.set_defaults(handler=_cmd_run)

    status = commands.add_parser(
        "status",
        help="render connguard.status() records as a table",
        description="Render per-endpoint status records as a table.",
        epilog=_STATUS_EPILOG,
        formatter_class=raw,
    )
    status.add_argument(
        "file", nargs="?", metavar="FILE", help="JSON list of status records ('-' for stdin)"
    )
    status.add_argument("--json", action="store_true", help="print the records as JSON")
    status.set_defaults(handler=_cmd_status)

    commands.add_parser(
        "demo",
        help="the field's scenario on loopback, before and after (`connguard demo --help`)",
        add_help=False,
    )
    return parser


def _version() -> str:
    return f"connguard {connguard.__version__}"


def _setup_logging(err: TextIO) -> None:
    # The library logs config warnings (unknown CONNGUARD_* variables) on "connguard".
    logger = logging.getLogger("connguard")
    if not logger.handlers:
        handler = logging.StreamHandler(err)
        handler.setFormatter(logging.Formatter("connguard: %(levelname)s: %(message)s"))
        logger.addHandler(handler)


@contextlib.contextmanager
def _interrupts() -> Iterator[None]:
    try:
        yield
    except KeyboardInterrupt:
        sys.stderr.write("\nconnguard: interrupted\n")
        raise SystemExit(130) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``connguard`` and ``python -m connguard``; returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    out, err = sys.stdout, sys.stderr
    _setup_logging(err)
    with _interrupts():
        if args_list[:1] == ["demo"]:
            # The demo parses its own options (`connguard demo --quick`, `demo --help`).
            return _cmd_demo(args_list[1:], err)
        args = _parser().parse_args(args_list)
        code: int = args.handler(args, out, err)
        return code
