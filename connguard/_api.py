"""install(), uninstall() and friends: the process-wide state in one place."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from ._config import Config
from ._endpoint import parse_endpoint
from ._errors import ConfigError
from ._guard import Guard

__all__ = ["current_guard", "install", "is_installed", "reset", "status", "uninstall"]

log = logging.getLogger("connguard")


class _State:
    __slots__ = ("guard", "lock", "patchers", "stoppers")

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.guard: Guard | None = None
        self.patchers: list[Any] = []
        # Called at uninstall(), newest first (background threads, hooks).
        self.stoppers: list[Callable[[], None]] = []


_state = _State()


def install(*, environ: Mapping[str, str] | None = None, **overrides: Any) -> bool:
    """Guard every outbound TCP connect of this process.

    Reads ``CONNGUARD_*`` from ``environ`` (default ``os.environ``) once; keyword
    ``overrides`` win (``install(connect_timeout=1.0, background="apm:8200")``).
    Idempotent: a second call while installed changes nothing and returns False.
    Returns True when connguard is now installed, False when it already was or
    ``CONNGUARD_ENABLED`` is false. Raises ``ConfigError`` on a bad value.
    """
    config = Config.from_env(os.environ if environ is None else environ, **overrides)
    with _state.lock:
        if _state.guard is not None:
            return False
        if config.log_level is not None:
            log.setLevel(config.log_level)
        if not config.enabled:
            log.info("CONNGUARD_ENABLED is false: connguard stays out of the way")
            return False
        guard = Guard(config)
        from .integrations import install_integrations

        try:
            _state.patchers = install_integrations(guard, config.integrations)
        except Exception:
            for patcher in _state.patchers:
                patcher.restore()
            _state.patchers = []
            raise
        guard.watchdog.start()
        _state.guard = guard
        log.info(
            "connguard installed (%s mode, integrations: %s)",
            config.mode,
            ", ".join(config.integrations),
        )
        return True


def uninstall() -> None:
    """Restore every attribute connguard patched and stop its threads; safe to repeat."""
    with _state.lock:
        while _state.stoppers:
            stop = _state.stoppers.pop()
            try:
                stop()
            except Exception:
                log.exception("connguard: error while stopping a helper")
        for patcher in reversed(_state.patchers):
            patcher.restore()
        _state.patchers = []
        if _state.guard is not None:
            _state.guard.watchdog.stop()
        _state.guard = None


def is_installed() -> bool:
    return _state.guard is not None


def current_guard() -> Guard | None:
    """The installed guard (for integrations hooked after install)."""
    return _state.guard


def on_uninstall(stop: Callable[[], None]) -> None:
    """Register a clean-up to run at ``uninstall()``."""
    with _state.lock:
        _state.stoppers.append(stop)


def status() -> list[dict[str, Any]]:
    """One JSON-serialisable record per guarded endpoint connguard has seen.

    Keys: endpoint, state (closed/open/half-open), guarded, priority, failures
    (consecutive), last_error, connect_budget (seconds), srtt, retry_after
    (seconds, None when closed), successes, failures_total, fast_failures,
    openings. Empty when not installed.
    """
    guard = _state.guard
    return [] if guard is None else guard.status()


def reset(endpoint: str | None = None) -> None:
    """Forget one endpoint (``"host:port"``) or all of them."""
    guard = _state.guard
    if endpoint is None:
        if guard is not None:
            guard.reset()
        return
    try:
        key = parse_endpoint(endpoint)
    except ValueError as exc:
        raise ConfigError(f"reset({endpoint!r}): {exc}") from None
    if guard is not None:
        guard.reset(key)
