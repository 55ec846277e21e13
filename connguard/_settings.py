"""Every setting as data: variable, default, parser, accepted values, reason.

``SETTINGS`` is the one table the configuration is built from: ``Config`` takes
its defaults from it, ``Config.from_env`` its parsers, ``connguard config`` its
names, and docs/configuration.md its reference table (``reference_table()``;
``python scripts/gen_config_docs.py`` rewrites it and a test fails when stale).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from ._endpoint import EndpointPattern, parse_patterns

__all__ = [
    "INTEGRATION_NAMES",
    "RELATIONS",
    "SETTINGS",
    "Mode",
    "Override",
    "Precheck",
    "Relation",
    "Setting",
    "parse_precheck",
    "plain",
    "reference_table",
]

Mode = Literal["enforce", "observe"]
PrecheckKind = Literal["tcp", "udp-echo", "icmp", "none", "callable"]
INTEGRATION_NAMES = ("socket", "asyncio", "httpx", "ldap3")
_UDP_ECHO_PORT = 7  # RFC 862
# A longer wait is a mistake, and the OS's timers overflow somewhere above (time_t).
_MAX_SECONDS = 86_400.0


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


# -- parsers: text -> value, ValueError saying what is wrong -----------------------------


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


def _seconds(value: float, *, zero: bool = False) -> float:
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise ValueError("not a positive number of seconds")
    if value > _MAX_SECONDS:
        raise ValueError(f"more than {_MAX_SECONDS:g} s (a day)")
    return value


def _parse_seconds(text: str) -> float:
    return _seconds(float(text))


def _parse_seconds_or_zero(text: str) -> float:
    return _seconds(float(text), zero=True)


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


def _parse_mode(text: str) -> Mode:
    value = text.strip().lower()
    if value == "enforce":
        return "enforce"
    if value == "observe":
        return "observe"
    raise ValueError("unknown mode")


def _parse_integrations(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip().lower() for n in text.split(",") if n.strip()))
    if not names:
        raise ValueError("names no integration")
    unknown = [n for n in names if n not in INTEGRATION_NAMES]
    if unknown:
        raise ValueError(f"unknown integration {unknown[0]!r}")
    return names


def _parse_log_level(text: str) -> str:
    value = text.strip().upper()
    if value not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("unknown level")
    return value


def _parse_priority(value: str) -> bool:
    if value not in ("foreground", "background"):
        raise ValueError(f"priority {value!r} is not foreground or background")
    return value == "background"


# key of an override entry -> (Override field, parser)
_OVERRIDE_KEYS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "connect_timeout": ("connect_timeout", _parse_seconds),
    "precheck": ("precheck", parse_precheck),
    "priority": ("background", _parse_priority),
}


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
            if key not in _OVERRIDE_KEYS:
                raise ValueError(f"unknown key {key!r} (known: {', '.join(_OVERRIDE_KEYS)})")
            name, parse = _OVERRIDE_KEYS[key]
            if name in values:
                raise ValueError(f"{key!r} given twice for {words[0]!r}")
            try:
                values[name] = parse(value)
            except ValueError as exc:
                raise ValueError(f"{words[0]!r} {key}={value!r}: {exc}") from None
        if not values:
            raise ValueError(f"{words[0]!r} sets nothing")
        result.append(Override(pattern, **values))
    return tuple(result)


# -- ready values: what install(name=<not text>) accepts ---------------------------------


def _ready_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise TypeError("not a boolean")


def _ready_number(parse: Callable[[str], Any]) -> Callable[[Any], Any]:
    def ready(value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return parse(repr(value))
        raise TypeError("not a number")

    return ready


def _ready_precheck(value: Any) -> Precheck:
    if isinstance(value, Precheck):
        return value
    if callable(value):
        return Precheck("callable", function=value)
    raise TypeError("not a pre-check")


def _ready_patterns(value: Any) -> tuple[EndpointPattern, ...]:
    if not isinstance(value, Iterable):
        raise TypeError("not a list of patterns")
    items = list(value)
    if all(isinstance(p, EndpointPattern) for p in items):
        return tuple(items)
    return parse_patterns(",".join(map(str, items)))


def _ready_integrations(value: Any) -> tuple[str, ...]:
    if not isinstance(value, Iterable):
        raise TypeError("not a list of names")
    return _parse_integrations(",".join(map(str, value)))


def _ready_overrides(value: Any) -> tuple[Override, ...]:
    if isinstance(value, tuple) and all(isinstance(o, Override) for o in value):
        return value
    raise TypeError("not a tuple of Override")


def _no_ready(value: Any) -> Any:
    raise TypeError("give it as text")


@dataclass(frozen=True, slots=True)
class Setting:
    """One configurable value: where it comes from, what it accepts, why its default."""

    field: str
    variable: str
    default: Any
    parse: Callable[[str], Any]  # the variable's text -> value (ValueError when bad)
    ready: Callable[[Any], Any]  # a non-text install() keyword value -> value
    accepts: str
    reason: str
    shown: str | None = None  # the default as the docs show it, when plain() says it badly


_BOOLEAN = "boolean"
_PATTERNS = "patterns"

SETTINGS: tuple[Setting, ...] = (
    Setting(
        "enabled", "CONNGUARD_ENABLED", True, _parse_bool, _ready_bool, _BOOLEAN,
        "installing connguard is the decision to use it; `0` is the kill switch that needs "
        "no code change",
    ),
    Setting(
        "mode", "CONNGUARD_MODE", "enforce", _parse_mode, _no_ready, "`enforce`, `observe`",
        "`observe` logs what would have been blocked and changes nothing — for a first rollout",
    ),
    Setting(
        "connect_timeout", "CONNGUARD_CONNECT_TIMEOUT", 2.0, _parse_seconds,
        _ready_number(_parse_seconds), "seconds > 0",
        "ceiling of every guarded connect and the deadline of a first contact: it survives "
        "one lost SYN (Linux and macOS retransmit it after 1 s; the next retry comes only at "
        "3 s, so a ceiling between 2 and 3 s buys nothing) while a dead endpoint costs 2 s "
        "instead of the OS's 21 s (Windows), 75 s (macOS) or ~130 s (Linux); between "
        "Finagle's 1 s and Envoy's and httpx's 5 s",
    ),
    Setting(
        "min_connect_timeout", "CONNGUARD_MIN_CONNECT_TIMEOUT", 1.5, _parse_seconds,
        _ready_number(_parse_seconds), "seconds > 0, ≤ the ceiling",
        "floor of the adaptive deadline: one SYN retransmission (TCP's initial RTO is 1 s) "
        "plus time for its answer, so one lost SYN to a fast endpoint is not turned into a "
        "failure. Unset, it follows a lower `CONNGUARD_CONNECT_TIMEOUT` down. Lower it on a "
        "reliable LAN to detect dead fast endpoints sooner",
    ),
    Setting(
        "costly_failure", "CONNGUARD_COSTLY_FAILURE", 0.5, _parse_seconds_or_zero,
        _ready_number(_parse_seconds_or_zero), "seconds ≥ 0 (0 = every failure counts)",
        "a refusal or an unreachable answer counts toward opening a circuit only when it "
        "took at least this long (timeouts always count): failing fast on a 0.1 ms refusal "
        "saves nothing and would add seconds of outage to every restart. 0.5 s is above any "
        "terrestrial round trip (≤ 0.3 s) and well below what makes a failure hurt: "
        "Windows' ~2 s refusal (it retries the SYN after a RST), `EHOSTUNREACH` after ARP's "
        "~3 s",
    ),
    Setting(
        "failure_threshold", "CONNGUARD_FAILURE_THRESHOLD", 3, _parse_positive_int,
        _ready_number(_parse_positive_int), "integer ≥ 1",
        "consecutive costly connect failures that open a circuit; fewer than Envoy's and "
        "Finagle's 5 because each one here cost a caller time. An endpoint that has never "
        "connected opens on its first costly failure",
    ),
    Setting(
        "open_seconds", "CONNGUARD_OPEN_SECONDS", 1.0, _parse_seconds,
        _ready_number(_parse_seconds), "seconds > 0, ≤ `CONNGUARD_MAX_OPEN_SECONDS`",
        "first wait before recovery is checked; doubles after each failed check, with ±20 % "
        "jitter (as gRPC) so that many processes do not probe in step. Short, because the "
        "check is the background prober's, not a caller's",
    ),
    Setting(
        "max_open_seconds", "CONNGUARD_MAX_OPEN_SECONDS", 3.0, _parse_seconds,
        _ready_number(_parse_seconds), "seconds > 0, ≥ `CONNGUARD_OPEN_SECONDS`",
        "cap of the wait between recovery checks, so an endpoint that comes back is reached "
        "within about 4 s however long it was dead (a check that is a connect can take one "
        "more connect deadline). Probes cost no caller anything, and one probe every 3 s per "
        "process is one SYN a recovering server hardly notices. With `CONNGUARD_PRECHECK="
        "none` the check is a caller's own connect: raise it there",
    ),
    Setting(
        "precheck", "CONNGUARD_PRECHECK", Precheck(), parse_precheck, _ready_precheck,
        "`tcp`, `udp-echo[:PORT]`, `icmp`, `none`",
        "how recovery is checked; `tcp` works everywhere, `udp-echo` (port 7 by default) and "
        "`icmp` send no SYN but need a responder — see [the lane](lane.md); `none` leaves "
        "recovery to a caller's connect",
    ),
    Setting(
        "precheck_first_contact", "CONNGUARD_PRECHECK_FIRST_CONTACT", False, _parse_bool,
        _ready_bool, _BOOLEAN,
        "run the pre-check before the first connect to a never-seen endpoint; off because it "
        "adds latency to every new endpoint. Useful with `udp-echo`/`icmp` on serialized hosts",
    ),
    Setting(
        "max_inflight_connects", "CONNGUARD_MAX_INFLIGHT_CONNECTS", 0, _parse_count,
        _ready_number(_parse_count), "integer ≥ 0",
        "`0` = no lane. `N` = connguard admits at most N connects at a time, foreground "
        "first. Most hosts do not serialize connects; `connguard doctor` tells you if yours "
        "does",
    ),
    Setting(
        "background", "CONNGUARD_BACKGROUND", (), parse_patterns, _ready_patterns, _PATTERNS,
        "endpoints whose connects are low priority (APM collectors, metrics); only you know "
        "which may wait",
    ),
    Setting(
        "include", "CONNGUARD_INCLUDE", (), parse_patterns, _ready_patterns, _PATTERNS,
        "which endpoints are guarded; all by default, loopback included, because a dead "
        "local port stalls callers too",
        shown="empty (all)",
    ),
    Setting(
        "exclude", "CONNGUARD_EXCLUDE", (), parse_patterns, _ready_patterns, _PATTERNS,
        "endpoints never guarded (wins over `CONNGUARD_INCLUDE`)",
    ),
    Setting(
        "overrides", "CONNGUARD_OVERRIDES", (), _parse_overrides, _ready_overrides,
        "`PATTERN key=value ...; ...` with keys `connect_timeout`, `precheck`, `priority`",
        "per-endpoint deadline, pre-check and priority (see below)",
    ),
    Setting(
        "integrations", "CONNGUARD_INTEGRATIONS", INTEGRATION_NAMES, _parse_integrations,
        _ready_integrations, "subset of `socket,asyncio,httpx,ldap3`",
        "which integrations to patch; a stall behind any of them is the same stall",
        shown="all available",
    ),
    Setting(
        "max_endpoints", "CONNGUARD_MAX_ENDPOINTS", 10_000, _parse_positive_int,
        _ready_number(_parse_positive_int), "integer ≥ 1",
        "bound of the health table (about 300 bytes an endpoint, so ~3 MB); the least "
        "recently used endpoint is forgotten first (second-chance eviction)",
    ),
    Setting(
        "log_level", "CONNGUARD_LOG_LEVEL", None, _parse_log_level, _no_ready,
        "`DEBUG`…`CRITICAL`",
        "level of the `connguard` logger; unset leaves it to your logging configuration",
    ),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Relation:
    """``lower <= upper``. A side the user did not give follows the one they did."""

    lower: str
    upper: str
    why: str


RELATIONS: tuple[Relation, ...] = (
    Relation(
        "min_connect_timeout",
        "connect_timeout",
        "the floor of the adaptive deadline must not exceed its ceiling",
    ),
    Relation("open_seconds", "max_open_seconds", "the cap must be at least the first wait"),
)


def plain(value: Any) -> Any:
    """A JSON-ready form of a setting's value: patterns and pre-checks as their text."""
    if isinstance(value, tuple):
        return [plain(v) for v in value]
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


def _shown(setting: Setting) -> str:
    if setting.shown is not None:
        return setting.shown
    value = plain(setting.default)
    if value is None:
        return "unset"
    if value == []:
        return "empty"
    if isinstance(value, bool):
        return f"`{int(value)}`"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    return f"`{value}`"


def reference_table() -> str:
    """The Markdown table of every variable, its default, what it accepts and why."""
    rows = ["| variable | default | accepted | why this default |", "| --- | --- | --- | --- |"]
    rows += [f"| `{s.variable}` | {_shown(s)} | {s.accepts} | {s.reason} |" for s in SETTINGS]
    return "\n".join(rows) + "\n"
