"""``connguard status [FILE]``: render ``connguard.status()`` records as a table.

``format_status(records)`` is public (re-exported by ``connguard.cli``): an
application can render ``connguard.status()`` with it, e.g. on an admin page.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import connguard

from ._common import EXIT_OK, EXIT_USAGE, command_parser, ms, print_json

_COLUMNS = (
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
_DURATIONS = frozenset({"connect_budget", "srtt", "retry_after"})


_TEXTS = (
    "render connguard.status() records as a table",
    "Render per-endpoint status records as a table.",
    """\
connguard keeps its state per process: without FILE this shows the current
process's (usually empty). Feed it json.dumps(connguard.status()) from your
application, e.g.: curl -s http://app/admin/connguard | connguard status -

exit codes: 0 shown, 2 unreadable input
""",
)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = command_parser(sub, "status", _TEXTS, run)
    parser.add_argument(
        "file", nargs="?", metavar="FILE", help="JSON list of status records ('-' for stdin)"
    )
    parser.add_argument("--json", action="store_true", help="print the records as JSON")


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key in _DURATIONS and isinstance(value, int | float):
        return ms(float(value))
    return str(value)


def format_status(records: Iterable[Mapping[str, Any]]) -> str:
    """Render ``connguard.status()`` records as a plain-text table (one line per endpoint).

    Durations are shown in ms or s; a missing or None value shows as ``-``.
    Returns a one-line message when there are no records.
    """
    rows = [[_cell(key, rec.get(key)) for key, _ in _COLUMNS] for rec in records]
    if not rows:
        return "no guarded endpoint seen yet"
    header = [title for _, title in _COLUMNS]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    out, err = sys.stdout, sys.stderr
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
        print_json(records, out)
    else:
        out.write(format_status(records) + "\n")
    return EXIT_OK
