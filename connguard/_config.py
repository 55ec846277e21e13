"""Configuration: one frozen dataclass, read from ``CONNGUARD_*`` variables once.

``Config.from_env(environ, **overrides)`` is pure: tests pass a dict, never
touch ``os.environ``. What each setting is — variable, default, parser, reason —
lives in ``_settings.SETTINGS``; this module turns given values into a coherent
``Config``: a setting the user did not give follows the related ones they did
(``_settings.RELATIONS``), and only values the user gave can contradict each
other (``ConfigError`` naming both).
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ._endpoint import EndpointPattern
from ._errors import ConfigError
from ._settings import (
    RELATIONS,
    SETTINGS,
    Mode,
    Override,
    Precheck,
    Setting,
    parse_precheck,
    plain,
)

__all__ = ["SETTINGS", "Config", "Override", "Precheck", "Setting", "parse_precheck"]

_BY_FIELD = {s.field: s for s in SETTINGS}
_BY_VARIABLE = {s.variable: s for s in SETTINGS}
_D = {s.field: s.default for s in SETTINGS}


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The effective configuration. Build it with ``Config.from_env``.

    Defaults come from ``SETTINGS``; ``derived`` names the settings that were not
    given but follow one that was (``connguard config`` shows them as derived).
    """

    enabled: bool = _D["enabled"]
    mode: Mode = _D["mode"]
    connect_timeout: float = _D["connect_timeout"]
    min_connect_timeout: float = _D["min_connect_timeout"]
    costly_failure: float = _D["costly_failure"]
    failure_threshold: int = _D["failure_threshold"]
    open_seconds: float = _D["open_seconds"]
    max_open_seconds: float = _D["max_open_seconds"]
    precheck: Precheck = _D["precheck"]
    precheck_first_contact: bool = _D["precheck_first_contact"]
    max_inflight_connects: int = _D["max_inflight_connects"]
    background: tuple[EndpointPattern, ...] = _D["background"]
    include: tuple[EndpointPattern, ...] = _D["include"]
    exclude: tuple[EndpointPattern, ...] = _D["exclude"]
    overrides: tuple[Override, ...] = _D["overrides"]
    integrations: tuple[str, ...] = _D["integrations"]
    max_endpoints: int = _D["max_endpoints"]
    log_level: str | None = _D["log_level"]
    derived: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str], /, **overrides: Any) -> Config:
        """Read ``CONNGUARD_*`` from ``environ``; keyword ``overrides`` win.

        Keywords take the field names (``connect_timeout=1.0``) and either the
        variable's text form or a ready value (a float, a list of patterns, a
        callable pre-check). Raises ``ConfigError`` naming the variable or keyword,
        the bad value and what is accepted.
        """
        given: dict[str, Any] = {}
        names: dict[str, str] = {}  # field -> how the user named it, for errors
        for setting in SETTINGS:
            text = environ.get(setting.variable)
            if text is not None and text.strip() != "":
                given[setting.field] = _parse(setting, text, setting.variable)
                names[setting.field] = setting.variable
        for name, value in overrides.items():
            given[name] = _coerce_keyword(name, value)
            names[name] = f"install({name}=...)"
        _warn_unknown_variables(environ)
        values, derived = _cohere(given, names)
        return cls(**values, derived=frozenset(derived))

    def sources(self, environ: Mapping[str, str]) -> dict[str, str]:
        """For each field: "environment" (its variable is set), "derived" or "default"."""
        result = {}
        for s in SETTINGS:
            if environ.get(s.variable, "").strip():
                result[s.field] = "environment"
            else:
                result[s.field] = "derived" if s.field in self.derived else "default"
        return result

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable view: patterns and pre-checks as their text."""
        return {f.name: plain(getattr(self, f.name)) for f in fields(self) if f.name != "derived"}


def _cohere(given: dict[str, Any], names: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
    """Fill in what follows from what was given; ConfigError when given values clash."""
    values = dict(given)
    derived = []
    for rel in RELATIONS:
        low = values.get(rel.lower, _D[rel.lower])
        high = values.get(rel.upper, _D[rel.upper])
        if low <= high:
            continue
        if rel.lower in given and rel.upper in given:
            raise ConfigError(
                f"{names[rel.lower]}={low:g} is above {names[rel.upper]}={high:g}; {rel.why}"
            )
        if rel.lower in given:
            values[rel.upper] = low
            derived.append(rel.upper)
        else:
            values[rel.lower] = high
            derived.append(rel.lower)
    return values, derived


def _parse(setting: Setting, text: str, name: str) -> Any:
    return _converted(setting, setting.parse, text, f"{name}={text!r}")


def _converted(setting: Setting, convert: Callable[[Any], Any], value: Any, shown: str) -> Any:
    """``convert(value)``, or a ConfigError naming ``shown`` and what is accepted."""
    try:
        return convert(value)
    except (ValueError, TypeError) as exc:
        accepted = setting.accepts.replace("`", "")  # the docs' Markdown, not the message's
        raise ConfigError(f"{shown} is invalid ({exc}); accepted: {accepted}") from None


def _coerce_keyword(name: str, value: Any) -> Any:
    setting = _BY_FIELD.get(name)
    if setting is None:
        close = difflib.get_close_matches(name, _BY_FIELD, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown setting {name!r}{hint}; known: {', '.join(_BY_FIELD)}")
    label = f"install({name}=...)"
    if isinstance(value, str):
        return _parse(setting, value, label)
    return _converted(setting, setting.ready, value, f"{label}: {value!r}")


def _warn_unknown_variables(environ: Mapping[str, str]) -> None:
    for name in environ:
        if name.startswith("CONNGUARD_") and name not in _BY_VARIABLE:
            close = difflib.get_close_matches(name, _BY_VARIABLE, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            logging.getLogger("connguard").warning("ignoring unknown variable %s%s", name, hint)
