"""``connguard demo``: the field incident on loopback, before and after (``connguard.demo``)."""

from __future__ import annotations

import argparse
import json
import sys

from ._common import EXIT_OK, EXIT_USAGE, command_parser, seconds_arg

_TEXTS = (
    "the field's scenario on loopback, before and after",
    "The field incident on loopback: logins stalling behind a dead APM collector on a\n"
    "host that serializes connects, before and after connguard.",
    "exit codes: 0 connguard helped, 1 it did not (or a row failed), 2 usage error",
)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = command_parser(sub, "demo", _TEXTS, run)
    parser.add_argument(
        "--seconds",
        type=seconds_arg(3, 50, " (the demo stays under a minute)"),
        default=24.0,
        help="length of each row, 3..50 (default 24)",
    )
    parser.add_argument(
        "--dead-connect",
        type=float,
        default=21.0,
        help="the agent's connect timeout (default 21, Windows)",
    )
    parser.add_argument(
        "--login",
        choices=("auto", "slapd", "embedded"),
        default="auto",
        help="login backend: OpenLDAP (slapd) or the embedded service (default auto)",
    )
    # One row of the demo, in the child process the demo starts for it.
    parser.add_argument("--child", metavar="SPEC", help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from connguard.demo import login, runner

    if args.child:
        runner.run_child(json.loads(args.child), sys.stdout)
        return EXIT_OK
    service = args.login
    if service == "auto":
        service = "slapd" if login.slapd_usable() else "embedded"
    elif service == "slapd" and not login.slapd_usable():
        sys.stderr.write("connguard demo: slapd (and ldap3) not found; use --login embedded\n")
        return EXIT_USAGE
    return runner.run_rows(args.seconds, args.dead_connect, service)
