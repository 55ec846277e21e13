"""Configuration: one frozen dataclass, read from ``CONNGUARD_*`` variables once.

``Config.from_env(environ, **overrides)`` is pure: tests pass a dict, never
touch ``os.environ``. Every setting is declared once in ``SETTINGS`` with its
variable, parser, default and the reason for that default; the docs and
``connguard config`` are generated from the same table.
"""

from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from ._endpoint import EndpointPattern, parse_patterns
from ._errors import ConfigError

__all__ = ["SETTINGS", "Config", "Override", "Precheck", "Setting", "parse_precheck"]

PrecheckKind = Literal["tcp", "udp-echo", "icmp", "none", "callable"]
PRECHECK_KINDS = ("tcp", "udp-echo[:PORT]", "icmp", "none")
INTEGRATION_NAMES = ("socket", "asyncio", "httpx", "ldap3")
_UDP_ECHO_PORT = 7  # RFC 862


@dataclass(frozen=True, slots=True)
class Precheck:
    """How reachability is checked without (or before) a caller's connect."""

    kind: PrecheckKind = "tcp"
    port: int | None = None  # udp-echo port
    function: Callable[[str, int, float], bool] | None = None  # kind == "callable"

    def __str__(self) -> str:
        if self.kind == "udp-echo":
            return f"udp-echo:{self.port}"
        if self.kind == "callable":
            return f"callable:{getattr(self.function, '__qualname__', self.function)!s}"
        return self.kind


@dataclass(frozen=True, slots=True)
class Override:
    """Per-endpoint settings from ``CONNGUARD_OVERRIDES``; None means "not overridden"."""

    pattern: EndpointPattern
    connect_timeout: float | None = None
    precheck: Precheck | None = None
    background: bool | None = None


def parse_precheck(text: str) -> Precheck:
    """``tcp``, ``udp-echo``, ``udp-echo:PORT``, ``icmp`` or ``none``."""
    kind, _, port_text = text.strip().lower().partition(":")
    if kind == "udp-echo":
        port = _UDP_ECHO_PORT
        if port_text:
            port = int(port_text)
            if not 0 < port < 65536:
                raise ValueError(f"port {port} is outside 1..65535")
        return Precheck("udp-echo", port)
    if kind in ("tcp", "icmp", "none") and not port_text:
        return Precheck(kind)  # type: ignore[arg-type]
    raise ValueError("unknown pre-check")


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("not a boolean")


def _parse_seconds(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise ValueError("not a positive number of seconds")
    return value


def _parse_positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("not a positive integer")
    return value


def _parse_count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("negative")
    return value


def _parse_mode(text: str) -> str:
    value = text.strip().lower()
    if value not in ("enforce", "observe"):
        raise ValueError("unknown mode")
    return value


def _parse_integrations(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip().lower() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in INTEGRATION_NAMES]
    if unknown:
        raise ValueError(f"unknown integration {unknown[0]!r}")
    return names


def _parse_log_level(text: str) -> str:
    value = text.strip().upper()
    if value not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("unknown level")
    return value


def _parse_overrides(text: str) -> tuple[Override, ...]:
    """``PATTERN key=value ...`` entries separated by ``;``."""
    result = []
    for entry in text.split(";"):
        words = entry.split()
        if not words:
            continue
        (pattern,) = parse_patterns(words[0]) or (None,)
        if pattern is None or "," in words[0]:
            raise ValueError(f"{words[0]!r} is not one endpoint pattern")
        values: dict[str, Any] = {}
        for word in words[1:]:
            key, eq, value = word.partition("=")
            if not eq:
                raise ValueError(f"{word!r} is not key=value")
            if key == "connect_timeout":
                values[key] = _parse_seconds(value)
            elif key == "precheck":
                values[key] = parse_precheck(value)
            elif key == "priority":
                if value not in ("foreground", "background"):
                    raise ValueError(f"priority {value!r} is not foreground or background")
                values["background"] = value == "background"
            else:
                raise ValueError(f"unknown key {key!r}")
        if not values:
            raise ValueError(f"{words[0]!r} sets nothing")
        result.append(Override(pattern, **values))
    return tuple(result)


@dataclass(frozen=True, slots=True)
class Setting:
    """One configurable value: where it comes from, what it accepts, why its default."""

    field: str
    variable: str
    parse: Callable[[str], Any]
    accepts: str
    reason: str


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "enabled",
        "CONNGUARD_ENABLED",
        _parse_bool,
        "1/0/true/false/yes/no",
        "on: installing connguard is the decision to use it; 0 is the kill switch",
    ),
    Setting(
        "mode",
        "CONNGUARD_MODE",
        _parse_mode,
        "enforce or observe",
        "enforce; observe logs what would have been blocked and changes nothing",
    ),
    Setting(
        "connect_timeout",
        "CONNGUARD_CONNECT_TIMEOUT",
        _parse_seconds,
        "seconds > 0",
        "2 s: first contact survives one lost SYN (Linux and macOS retransmit after 1 s; "
        "the next retry comes at 3 s, so a longer ceiling buys nothing until then) while "
        "a dead endpoint costs 2 s instead of the OS's 21 s (Windows) to 130 s (Linux)",
    ),
    Setting(
        "min_connect_timeout",
        "CONNGUARD_MIN_CONNECT_TIMEOUT",
        _parse_seconds,
        "seconds > 0, at most CONNGUARD_CONNECT_TIMEOUT",
        "1.5 s: one SYN retransmission (1 s initial RTO) plus its answer, so a single "
        "lost SYN to a fast endpoint is not turned into a failure",
    ),
    Setting(
        "failure_threshold",
        "CONNGUARD_FAILURE_THRESHOLD",
        _parse_positive_int,
        "integer >= 1",
        "3 consecutive failures (Envoy and Finagle use 5, but here every failure can "
        "cost a whole deadline); an endpoint that never connected opens on its first",
    ),
    Setting(
        "open_seconds",
        "CONNGUARD_OPEN_SECONDS",
        _parse_seconds,
        "seconds > 0",
        "5 s first wait, doubling with +-20 % jitter (Finagle's 5 s, gRPC's jitter)",
    ),
    Setting(
        "max_open_seconds",
        "CONNGUARD_MAX_OPEN_SECONDS",
        _parse_seconds,
        "seconds > 0, at least CONNGUARD_OPEN_SECONDS",
        "300 s cap, as Envoy and Finagle: a long-dead endpoint is checked every 5 min",
    ),
    Setting(
        "precheck",
        "CONNGUARD_PRECHECK",
        parse_precheck,
        ", ".join(PRECHECK_KINDS),
        "tcp: works everywhere; udp-echo and icmp send no SYN but need a responder",
    ),
    Setting(
        "precheck_first_contact",
        "CONNGUARD_PRECHECK_FIRST_CONTACT",
        _parse_bool,
        "1/0/true/false/yes/no",
        "off: a pre-check before the first connect adds latency to every new endpoint",
    ),
    Setting(
        "max_inflight_connects",
        "CONNGUARD_MAX_INFLIGHT_CONNECTS",
        _parse_count,
        "integer >= 0 (0 = no lane)",
        "0: most hosts do not serialize connects; run `connguard doctor` to find out",
    ),
    Setting(
        "background",
        "CONNGUARD_BACKGROUND",
        parse_patterns,
        "comma-separated HOST:PORT, HOST:*, *.DOMAIN:PORT, CIDR[:PORT]",
        "none: only you know which endpoints (APM, metrics) may wait",
    ),
    Setting(
        "include",
        "CONNGUARD_INCLUDE",
        parse_patterns,
        "comma-separated patterns (empty = every endpoint)",
        "every endpoint, loopback included: a dead local port stalls callers too",
    ),
    Setting("exclude", "CONNGUARD_EXCLUDE", parse_patterns, "comma-separated patterns", "none"),
    Setting(
        "overrides",
        "CONNGUARD_OVERRIDES",
        _parse_overrides,
        "'PATTERN key=value ...; ...' with keys connect_timeout, precheck, "
        "priority=foreground|background",
        "none",
    ),
    Setting(
        "integrations",
        "CONNGUARD_INTEGRATIONS",
        _parse_integrations,
        "comma-separated subset of " + ",".join(INTEGRATION_NAMES),
        "all: a stall behind any of them is the same stall",
    ),
    Setting(
        "max_endpoints",
        "CONNGUARD_MAX_ENDPOINTS",
        _parse_positive_int,
        "integer >= 1",
        "10000 tracked endpoints (about 3 MB); the least recently used is forgotten",
    ),
    Setting(
        "log_level",
        "CONNGUARD_LOG_LEVEL",
        _parse_log_level,
        "DEBUG, INFO, WARNING, ERROR or CRITICAL",
        "unset: the application's logging configuration decides",
    ),
)
_BY_FIELD = {s.field: s for s in SETTINGS}
_BY_VARIABLE = {s.variable: s for s in SETTINGS}


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The effective configuration. Build it with ``Config.from_env``."""

    enabled: bool = True
    mode: str = "enforce"
    connect_timeout: float = 2.0
    min_connect_timeout: float = 1.5
    failure_threshold: int = 3
    open_seconds: float = 5.0
    max_open_seconds: float = 300.0
    precheck: Precheck = field(default_factory=Precheck)
    precheck_first_contact: bool = False
    max_inflight_connects: int = 0
    background: tuple[EndpointPattern, ...] = ()
    include: tuple[EndpointPattern, ...] = ()
    exclude: tuple[EndpointPattern, ...] = ()
    overrides: tuple[Override, ...] = ()
    integrations: tuple[str, ...] = INTEGRATION_NAMES
    max_endpoints: int = 10_000
    log_level: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str], /, **overrides: Any) -> Config:
        """Read ``CONNGUARD_*`` from ``environ``; keyword ``overrides`` win.

        Keywords take the field names (``connect_timeout=1.0``) and either the
        variable's text form or a ready value (a float, a list of patterns, a
        callable pre-check). Raises ``ConfigError`` naming the variable or keyword,
        the bad value and what is accepted.
        """
        values: dict[str, Any] = {}
        for setting in SETTINGS:
            text = environ.get(setting.variable)
            if text is not None and text.strip() != "":
                values[setting.field] = _parse(setting, text, setting.variable)
        for name, value in overrides.items():
            values[name] = _coerce_keyword(name, value)
        _warn_unknown_variables(environ)
        config = cls(**values)
        config._check_consistency()
        return config

    def sources(self, environ: Mapping[str, str]) -> dict[str, str]:
        """For each field: "environment" when the variable was set, else "default"."""
        return {
            s.field: "environment" if environ.get(s.variable, "").strip() else "default"
            for s in SETTINGS
        }

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable view: patterns and pre-checks as their text."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    def with_changes(self, **changes: Any) -> Config:
        config = replace(self, **{k: _coerce_keyword(k, v) for k, v in changes.items()})
        config._check_consistency()
        return config

    def _check_consistency(self) -> None:
        if self.min_connect_timeout > self.connect_timeout:
            raise ConfigError(
                f"CONNGUARD_MIN_CONNECT_TIMEOUT={self.min_connect_timeout:g} is above "
                f"CONNGUARD_CONNECT_TIMEOUT={self.connect_timeout:g}; the floor of the "
                "adaptive deadline must not exceed its ceiling"
            )
        if self.max_open_seconds < self.open_seconds:
            raise ConfigError(
                f"CONNGUARD_MAX_OPEN_SECONDS={self.max_open_seconds:g} is below "
                f"CONNGUARD_OPEN_SECONDS={self.open_seconds:g}; the cap must be at least "
                "the first wait"
            )


def _parse(setting: Setting, text: str, name: str) -> Any:
    try:
        return setting.parse(text)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"{name}={text!r} is invalid ({exc}); accepted: {setting.accepts}"
        ) from None


def _coerce_keyword(name: str, value: Any) -> Any:
    setting = _BY_FIELD.get(name)
    if setting is None:
        close = difflib.get_close_matches(name, _BY_FIELD, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown setting {name!r}{hint}; known: {', '.join(_BY_FIELD)}")
    label = f"install({name}=...)"
    if isinstance(value, str):
        return _parse(setting, value, label)
    if name == "precheck" and callable(value):
        return Precheck("callable", function=value)
    if name in ("background", "include", "exclude") and isinstance(value, Iterable):
        items = list(value)
        if all(isinstance(p, EndpointPattern) for p in items):
            return tuple(items)
        return _parse(setting, ",".join(map(str, items)), label)
    if name == "integrations" and isinstance(value, Iterable):
        return _parse(setting, ",".join(map(str, value)), label)
    # Ready values (numbers, booleans, Precheck, Override tuples) go through the text
    # parser where one exists, so that keyword and variable accept exactly the same.
    if isinstance(value, bool) and name in ("enabled", "precheck_first_contact"):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _parse(setting, repr(value), label)
    if isinstance(value, Precheck) and name == "precheck":
        return value
    if (
        name == "overrides"
        and isinstance(value, tuple)
        and all(isinstance(o, Override) for o in value)
    ):
        return value
    raise ConfigError(f"{label}: {value!r} is invalid; accepted: {setting.accepts}")


def _warn_unknown_variables(environ: Mapping[str, str]) -> None:
    for name in environ:
        if name.startswith("CONNGUARD_") and name not in _BY_VARIABLE:
            close = difflib.get_close_matches(name, _BY_VARIABLE, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            logging.getLogger("connguard").warning("ignoring unknown variable %s%s", name, hint)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, EndpointPattern):
        return value.text
    if isinstance(value, Precheck):
        return str(value)
    if isinstance(value, Override):
        return {
            "pattern": value.pattern.text,
            "connect_timeout": value.connect_timeout,
            "precheck": None if value.precheck is None else str(value.precheck),
            "background": value.background,
        }
    return value
