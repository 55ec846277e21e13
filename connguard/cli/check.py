"""``connguard check HOST:PORT``: is it reachable, how fast, do its pre-checks answer?

The verdicts come from the core: ``classify_failure`` (the errno classes the guard
counts) for the connect, ``echo_failure`` (the prober's own udp-echo and icmp
checks) for ``--precheck``.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from .._config import Precheck
from .._endpoint import format_endpoint
from .._guard import classify_failure
from .._probe import echo_failure
from ._common import (
    EXIT_FAIL,
    EXIT_OK,
    command_parser,
    endpoint_arg,
    error_text,
    ms,
    precheck_arg,
    print_json,
    resolve,
    seconds_arg,
)

_VERDICTS = {"timeout": "no answer (timeout)", "refused": "refused", "unreachable": "unreachable"}


_TEXTS = (
    "is HOST:PORT reachable? connect time and verdict",
    "Check whether HOST:PORT accepts a TCP connect, and how fast.",
    """\
Connects to each address HOST resolves to (at most 8) and reports the verdict:
reachable, refused, no answer (timeout), unreachable. --precheck udp-echo or icmp
also runs that pre-check (it sends no SYN) and reports it next to the connect.
icmp uses an unprivileged ICMP socket; Linux allows it only for groups inside
net.ipv4.ping_group_range.

exit codes: 0 reachable (at least one address), 1 not reachable, 2 usage error
""",
)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = command_parser(sub, "check", _TEXTS, run)
    parser.add_argument("endpoint", type=endpoint_arg, metavar="HOST:PORT")
    parser.add_argument(
        "--precheck",
        type=precheck_arg,
        default=Precheck("tcp"),
        metavar="tcp|udp-echo[:PORT]|icmp",
        help="also run this pre-check (udp-echo: default port 7); default tcp only",
    )
    parser.add_argument(
        "--timeout",
        type=seconds_arg(0.05, 600),
        default=3.0,
        metavar="S",
        help="connect and pre-check timeout in seconds (default 3)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


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


def _failed(address: str, exc: OSError, started: float) -> _Probe:
    verdict = _VERDICTS.get(classify_failure(exc) or "", "error")
    return _Probe(address, verdict, time.monotonic() - started, error_text(exc))


def _tcp_probe(family: socket.AddressFamily, address: str, port: int, timeout: float) -> _Probe:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    started = time.monotonic()
    try:
        sock.connect((address, port))
    except OSError as exc:
        return _failed(address, exc, started)
    finally:
        sock.close()
    return _Probe(address, "reachable", time.monotonic() - started)


def _precheck_probe(check: Precheck, address: str, timeout: float) -> _Probe:
    started = time.monotonic()
    failure = echo_failure(check, address, timeout)
    if failure is None:
        return _Probe(address, "answered", time.monotonic() - started)
    if isinstance(failure, PermissionError) and check.kind == "icmp":
        return _Probe(address, "not permitted", error=_icmp_not_permitted(failure))
    return _failed(address, failure, started)


def _icmp_not_permitted(exc: OSError) -> str:
    try:
        groups: str | None = Path("/proc/sys/net/ipv4/ping_group_range").read_text()
    except OSError:
        groups = None
    if groups is None:
        return f"{error_text(exc)}: this OS does not allow unprivileged ICMP echo"
    return (
        f"{error_text(exc)}: this OS does not let this user send ICMP echo without "
        "privileges; unprivileged ICMP sockets need the process's group inside "
        f"net.ipv4.ping_group_range (here {' '.join(groups.split())!r}); widen it with "
        "sysctl, or use --precheck udp-echo"
    )


def run(args: argparse.Namespace) -> int:
    host, port = args.endpoint
    check: Precheck = args.precheck
    report: dict[str, Any] = {"endpoint": format_endpoint((host, port)), "timeout": args.timeout}
    try:
        addresses = resolve(host, port)
    except OSError as exc:
        report.update(verdict="unresolved", error=error_text(exc), addresses=[])
        addresses = []
    datagram = check.kind in ("udp-echo", "icmp")
    precheck = [_precheck_probe(check, a, args.timeout) for _, a in addresses] if datagram else []
    probes = [_tcp_probe(f, a, port, args.timeout) for f, a in addresses]
    if addresses:
        reachable = [p for p in probes if p.verdict == "reachable"]
        report["verdict"] = "reachable" if reachable else probes[0].verdict
        report["addresses"] = [p.as_dict() for p in probes]
    if datagram:
        report["precheck"] = {"kind": str(check), "results": [p.as_dict() for p in precheck]}
    if args.json:
        print_json(report, sys.stdout)
    else:
        _write(report, probes, precheck, sys.stdout)
    return EXIT_OK if report["verdict"] == "reachable" else EXIT_FAIL


def _write(
    report: Mapping[str, Any], probes: list[_Probe], precheck: list[_Probe], out: TextIO
) -> None:
    out.write(f"connguard check {report['endpoint']} (timeout {report['timeout']:g} s)\n")
    if report["verdict"] == "unresolved":
        out.write(f"  cannot resolve the host: {report['error']}\n")
    kind = report.get("precheck", {}).get("kind")
    pres: list[_Probe | None] = list(precheck) if precheck else [None] * len(probes)
    for tcp, pre in zip(probes, pres, strict=True):
        line = f"  {tcp.address}: tcp connect {tcp.verdict}, {ms(tcp.seconds)}"
        if tcp.error and tcp.verdict != "no answer (timeout)":
            line += f" ({tcp.error})"
        out.write(line + "\n")
        if pre is not None:
            line = f"  {pre.address}: pre-check {kind} {pre.verdict}"
            if pre.seconds is not None:
                line += f", {ms(pre.seconds)}"
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
