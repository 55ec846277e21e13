"""The ``connguard`` command line: doctor, check, config, run, status, demo.

One module per command, each with ``add_parser(sub)`` (its options, help and
exit codes) and ``run(args) -> int``; a new command is a new module added to
``COMMANDS``. The commands use the public API plus the core's own helpers for
endpoints, pre-checks and failure classes, so there is one of each.

``format_status(records)`` is public: an application can render
``connguard.status()`` with it, e.g. on an admin page. Exit codes are listed
per command in ``docs/cli.md`` and in ``--help``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator, Sequence
from typing import TextIO

import connguard

from . import check, config, demo, doctor, run, status
from .status import format_status

__all__ = ["format_status", "main"]

COMMANDS = (doctor, check, config, run, status, demo)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="connguard",
        description="Keep applications from stalling behind dead network endpoints.",
        epilog="Run `connguard COMMAND --help` for a command's options and exit codes.",
    )
    parser.add_argument("--version", action="version", version=f"connguard {connguard.__version__}")
    sub = parser.add_subparsers(dest="command_name", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


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
    _setup_logging(sys.stderr)
    with _interrupts():
        args = _parser().parse_args(sys.argv[1:] if argv is None else list(argv))
        code: int = args.run(args)
        return code
