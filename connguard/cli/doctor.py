"""``connguard doctor``: does this host serialize connect attempts? How many slots?

The experiment itself is in ``_experiment.py``; this module picks the targets,
runs it with connguard out of the way, and reports (text or ``--json``).
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import connguard

from .._endpoint import Endpoint, format_endpoint
from ._common import (
    EXIT_FAIL,
    EXIT_INCONCLUSIVE,
    EXIT_OK,
    command_parser,
    endpoint_arg,
    is_loopback,
    ms,
    print_json,
    resolve,
    seconds_arg,
)
from ._experiment import Experiment, Inconclusive, Progress, Round, Target

_TARGETS = (
    ("dead", "an endpoint that drops SYNs (default: a loopback blackhole)"),
    ("live", "an endpoint that accepts connects (default: a loopback listener)"),
)


_TEXTS = (
    "does this host serialize connect attempts? (the two-connect experiment)",
    "Measure whether a connect waits behind unanswered connects of the "
    "same process, estimate the number of slots and recommend CONNGUARD_* settings.",
    """\
The experiment: start blocking connects to the dead target (SYNs that are never
answered), then a connect to the live target, and see whether it waits behind
them; with k = 1, 2, ... pending dead connects, the first k that makes it wait is
the number of connect slots. Without targets it uses a loopback blackhole and a
loopback listener. connguard is not installed while it measures.

exit codes: 0 not serialized, 1 serialized, 2 usage error,
            3 inconclusive (the dead target answered or the live one did not)
""",
)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = command_parser(sub, "doctor", _TEXTS, run)
    for role, text in _TARGETS:
        parser.add_argument(f"--{role}", type=endpoint_arg, metavar="HOST:PORT", help=text)
    parser.add_argument(
        "--timeout",
        # The wait must stand out from a loopback connect and the 0.2 s settle.
        type=seconds_arg(0.3, 600),
        default=2.0,
        metavar="S",
        help="how long a live connect may wait behind the dead ones before the dead "
        "connects are aborted (default 2)",
    )
    parser.add_argument(
        "--max-slots",
        type=int,
        choices=range(1, 17),
        default=4,
        metavar="N",
        help="try up to N concurrent dead connects, 1..16 (default 4)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    # Testing aid (docs/cli.md): emulate a serialized host inside this process.
    parser.add_argument(
        "--testing-serialized-slots", type=int, choices=range(17), default=0, help=argparse.SUPPRESS
    )


def _target(value: Endpoint, role: str) -> Target:
    host, port = value
    try:
        family, address = resolve(host, port, limit=1)[0]
    except (OSError, IndexError) as exc:
        raise Inconclusive(f"cannot resolve the {role} target {host}: {exc}") from None
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


def run(args: argparse.Namespace) -> int:
    out, err = sys.stdout, sys.stderr
    if connguard.is_installed():
        # doctor measures the host, not connguard: take it out of the way.
        connguard.uninstall()
        err.write("connguard doctor: connguard was installed in this process; uninstalled it\n")
    from connguard import testing

    report: dict[str, Any] = {"serialized": False, "slots": None, "conclusive": False}
    rounds: list[Round] = []
    notes: list[str] = []
    with contextlib.ExitStack() as stack:
        try:
            if args.dead is None:
                hole = stack.enter_context(testing.blackhole())
                dead: Target = (socket.AF_INET, hole.address)
            else:
                dead = _target(args.dead, "dead")
            if args.live is None:
                server = stack.enter_context(testing.tcp_server())
                live: Target = (socket.AF_INET, server.address)
            else:
                live = _target(args.live, "live")
            if args.testing_serialized_slots:
                stack.enter_context(testing.serialized_host(args.testing_serialized_slots))
                notes.append(
                    f"testing aid: serialized host emulated in this process with "
                    f"{args.testing_serialized_slots} slot(s)"
                )
            report["targets"] = {
                "dead": format_endpoint(dead[1]),
                "live": format_endpoint(live[1]),
                "loopback": is_loopback(dead[1][0]) or is_loopback(live[1][0]),
            }
            experiment = Experiment(dead, live, args.timeout, Progress(err))
            experiment.measure_baseline()
            slots = experiment.find_slots(args.max_slots, rounds)
            report.update(serialized=slots is not None, slots=slots, conclusive=True)
            report["threshold_seconds"] = round(experiment.threshold, 6)
            report["baseline_connect_seconds"] = [round(b, 6) for b in experiment.baseline]
        except Inconclusive as exc:
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
        print_json(report, out)
    else:
        _write(report, out)
    if not report["conclusive"]:
        return EXIT_INCONCLUSIVE
    return EXIT_FAIL if report["serialized"] else EXIT_OK


def _write(report: Mapping[str, Any], out: TextIO) -> None:
    out.write("connguard doctor: does this host make a connect wait behind another?\n")
    targets = report.get("targets")
    if targets:
        out.write(f"  dead target {targets['dead']}, live target {targets['live']}\n")
    baseline = report.get("baseline_connect_seconds")
    if baseline:
        out.write(f"  live connect alone: {ms(max(baseline))} (slowest of {len(baseline)})\n")
    for r in report["rounds"]:
        line = f"  {r['dead_connects']} dead connect(s) pending: live connect "
        if r["waited"]:
            line += f"WAITED {ms(r['live_connect_seconds'])}"
            if r["released_after_abort_seconds"] is not None:
                line += (
                    f", went through {ms(r['released_after_abort_seconds'])} after the dead "
                    "connects were aborted"
                )
        else:
            line += f"{ms(r['live_connect_seconds'])}, not delayed"
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
