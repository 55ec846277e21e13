"""What more than one command needs: exit codes, argument types, number and JSON output."""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
from collections.abc import Callable
from typing import Any, TextIO

from .._config import Precheck, parse_precheck
from .._endpoint import Endpoint, parse_endpoint

EXIT_OK = 0
EXIT_FAIL = 1  # doctor: serialized; check: not reachable
EXIT_USAGE = 2  # bad arguments or configuration (argparse uses 2 as well)
EXIT_INCONCLUSIVE = 3  # doctor: the targets did not behave as dead/live

RAW = argparse.RawDescriptionHelpFormatter


def endpoint_arg(text: str) -> Endpoint:
    """``HOST:PORT`` or ``[V6]:PORT`` for argparse; a bad value is a usage error."""
    try:
        return parse_endpoint(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (write HOST:PORT, IPv6 as [::1]:443)") from None


def precheck_arg(text: str) -> Precheck:
    """A ``CONNGUARD_PRECHECK`` value for argparse."""
    try:
        return parse_precheck(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r}: {exc}; accepted: tcp, udp-echo[:PORT], icmp"
        ) from None


def seconds_arg(low: float, high: float, why: str = "") -> Callable[[str], float]:
    """An argparse type: a number of seconds within ``low..high`` (``why`` says why)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} s is outside {low:g}..{high:g}{why}")
        return value

    return parse


def command_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    texts: tuple[str, str, str],
    run: Callable[[argparse.Namespace], int],
    usage: str | None = None,
) -> argparse.ArgumentParser:
    """A command's parser from its (help, description, epilog); ``args.run`` is ``run``."""
    summary, description, epilog = texts
    parser = sub.add_parser(
        name,
        help=summary,
        description=description,
        epilog=epilog,
        usage=usage,
        formatter_class=RAW,
    )
    parser.set_defaults(run=run)
    return parser


def ms(seconds: float | None) -> str:
    """A duration for people: ``0.4 ms``, ``2.00 s``; ``-`` for none."""
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def resolve(host: str, port: int, limit: int = 8) -> list[tuple[socket.AddressFamily, str]]:
    """Distinct (family, address) pairs of ``host``, in the resolver's order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: dict[tuple[socket.AddressFamily, str], None] = {}
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            seen.setdefault((family, str(sockaddr[0])), None)
    return list(seen)[:limit]


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def print_json(obj: Any, out: TextIO) -> None:
    out.write(json.dumps(obj, indent=2) + "\n")
