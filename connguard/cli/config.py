"""``connguard config``: print and validate the configuration ``install()`` would use."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from typing import Any

import connguard

from .._config import SETTINGS
from ._common import EXIT_OK, EXIT_USAGE, command_parser, print_json

_VARIABLES = {setting.field: setting.variable for setting in SETTINGS}


_TEXTS = (
    "print and validate the effective configuration",
    "Show the configuration connguard.install() would use here.",
    """\
Prints every setting with its CONNGUARD_* variable, its effective value and its
source (default or environment), and validates them as connguard.install() would.

exit codes: 0 valid, 2 invalid (the message names the variable and what it accepts)
""",
)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = command_parser(sub, "config", _TEXTS, run)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _text(value: Any) -> str:
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


def run(args: argparse.Namespace) -> int:
    out, err = sys.stdout, sys.stderr
    environ = dict(os.environ)
    try:
        config = connguard.Config.from_env(environ)
    except connguard.ConfigError as exc:
        err.write(f"connguard config: invalid configuration: {exc}\n")
        if args.json:
            print_json({"valid": False, "error": str(exc)}, out)
        return EXIT_USAGE
    values = config.as_dict()
    sources = config.sources(environ)
    known = set(_VARIABLES.values())
    unknown = sorted(n for n in environ if n.startswith("CONNGUARD_") and n not in known)
    settings = [
        {"setting": name, "variable": _VARIABLES[name], "value": value, "source": sources[name]}
        for name, value in values.items()
    ]
    if args.json:
        print_json({"valid": True, "settings": settings, "unknown_variables": unknown}, out)
        return EXIT_OK
    out.write("connguard configuration (read from the environment):\n")
    width = max(len(s["variable"]) for s in settings)
    for s in settings:
        out.write(f"  {s['variable']:<{width}}  {s['source']:<11}  {_text(s['value'])}\n")
    for name in unknown:
        out.write(f"  {name}: unknown variable, ignored\n")
    out.write("valid.\n")
    return EXIT_OK
