"""``connguard run -- CMD ...``: run a program with connguard installed, no code change."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import connguard

from ._common import EXIT_OK, EXIT_USAGE, command_parser

_BOOTSTRAP_DIR = Path(__file__).resolve().parent.parent / "_bootstrap"


_TEXTS = (
    "run a Python program with connguard installed (no code change)",
    "Run CMD with connguard installed in its Python processes.",
    """\
Runs CMD with connguard installed at interpreter start in every Python process it
starts, without changing its code: a sitecustomize on PYTHONPATH installs it, after
running the program's own sitecustomize. Configure it with CONNGUARD_* variables.
Python started with -I, -E or -S skips it.

exit codes: CMD's own exit code; 2 invalid configuration, 126/127 CMD not runnable
example: CONNGUARD_MAX_INFLIGHT_CONNECTS=1 connguard run -- python app.py
""",
)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = command_parser(sub, "run", _TEXTS, run, usage="connguard run [-h] -- CMD [ARGS ...]")
    parser.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        metavar="-- CMD [ARGS ...]",
        help="the command to run, after --",
    )


def _child_environ(environ: Mapping[str, str]) -> dict[str, str]:
    env = dict(environ)
    entries = [e for e in env.get("PYTHONPATH", "").split(os.pathsep) if e]
    bootstrap = str(_BOOTSTRAP_DIR)
    env["PYTHONPATH"] = os.pathsep.join([bootstrap, *(e for e in entries if e != bootstrap)])
    return env


def run(args: argparse.Namespace) -> int:
    err = sys.stderr
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
    sys.stdout.flush()
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
