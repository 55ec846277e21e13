"""install(), uninstall() and friends: the process-wide state in one place."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

from ._config import Config
from ._endpoint import parse_endpoint
from ._errors import ConfigError
from ._guard import Guard

__all__ = [
    "current_guard",
    "displaced",
    "install",
    "is_installed",
    "lane_status",
    "reset",
    "status",
    "uninstall",
    "verify_patches",
]

log = logging.getLogger("connguard")


class _State:
    __slots__ = ("displaced", "guard", "lock", "patchers", "prober")

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.guard: Guard | None = None
        self.patchers: list[Any] = []
        self.prober: Any = None  # connguard._probe.Prober, when recovery is probed
        # Patched attributes that something else now stands in (see verify_patches()).
        self.displaced: list[str] = []


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
        _set_up_probing(guard)
        from .integrations import install_integrations

        try:
            _state.patchers = install_integrations(guard, config.integrations)
        except Exception:
            for patcher in _state.patchers:
                patcher.restore()
            _state.patchers = []
            raise
        guard.watchdog.on_idle = verify_patches  # notices a displaced wrapper by itself
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
        for patcher in reversed(_state.patchers):
            patcher.restore()
        _state.patchers = []
        if _state.prober is not None:
            _state.prober.stop()
            _state.prober = None
        if _state.guard is not None:
            # Not stop(): a connect admitted before uninstall() keeps its deadline.
            _state.guard.watchdog.retire()
        _state.guard = None
        _state.displaced = []


def _set_up_probing(guard: Guard) -> None:
    """Pre-checks and the background prober (started lazily, when a circuit first opens)."""
    from ._probe import FirstContact, Prober, check_supported

    config = guard.config
    check_supported(config)  # ConfigError now, not at the first probe
    if config.precheck_first_contact:
        guard.first_contact = FirstContact(guard).check
    if config.precheck.kind == "none" and not any(
        o.precheck is not None and o.precheck.kind != "none" for o in config.overrides
    ):
        return  # nothing to probe with: recovery stays with a caller's trial connect
    prober = Prober(guard, mark_internal=_mark_internal)
    guard.on_open = prober.notify
    _state.prober = prober


def _mark_internal() -> None:
    # The prober's connects are connguard's own: the integrations step aside.
    from .integrations._context import admitted_above

    admitted_above.set(True)


def _prober_after_fork() -> None:
    prober = _state.prober
    if prober is not None:
        prober.after_fork()


if hasattr(os, "register_at_fork"):
    # Registered after _guard's handler (imported above), so the table is usable.
    os.register_at_fork(after_in_child=_prober_after_fork)


_NO_LANE: dict[str, Any] = {
    "slots": 0,
    "in_use": 0,
    "in_use_background": 0,
    "queued_foreground": 0,
    "queued_background": 0,
    "granted": 0,
    "waited": 0,
    "preemptions": 0,
    "lane_timeouts": 0,
    "max_wait": 0.0,
}


def lane_status() -> dict[str, Any] | None:
    """The connect lane and the prober; None when connguard is not installed.

    Keys: slots (0 when the lane is off), in_use, in_use_background,
    queued_foreground, queued_background, granted, waited (had to queue),
    preemptions, lane_timeouts, max_wait (seconds), and prober (running, probes,
    recoveries; None without a prober).
    JSON-serialisable.
    """
    guard = _state.guard
    if guard is None:
        return None
    record = _NO_LANE.copy() if guard.gate is None else guard.gate.status()
    prober = _state.prober
    record["prober"] = None if prober is None else prober.status()
    return record


def is_installed() -> bool:
    """True while installed (even when an attribute is displaced: see ``displaced()``).

    Checks the patched attributes first (``verify_patches()``).
    """
    verify_patches()
    return _state.guard is not None


def verify_patches() -> list[str]:
    """Check every patched attribute; put back what a naive restore removed.

    An attribute set back to the very original connguard had wrapped (pytest-socket
    does so after every test) gets connguard's wrapper again. When something else
    stands there, it is left alone and logged once; the names of such attributes
    are returned (and kept for ``displaced()``). Cheap (one dict lookup per patched
    attribute): called at ``status()``, ``is_installed()`` and from idle ticks,
    never per connect. Never raises.
    """
    if _state.guard is None:
        return []
    # Never wait for install()/uninstall(): a background tick calling this while
    # uninstall() joins that very thread would stall both. Skip this check instead.
    if not _state.lock.acquire(blocking=False):
        return list(_state.displaced)
    try:
        found: list[str] = []
        for patcher in _state.patchers:
            found.extend(patcher.verify())
        _state.displaced = found
        return list(found)
    except Exception:  # a check must never break the caller (a tick, status())
        log.debug("connguard: verify_patches failed", exc_info=True)
        return []
    finally:
        _state.lock.release()


def displaced() -> list[str]:
    """Patched attributes something else now stands in, e.g. ``["socket.connect"]``.

    Calls through such an attribute are not guarded. Empty when none (or not
    installed). Checks first, like ``is_installed()``.
    """
    verify_patches()
    return list(_state.displaced)


def current_guard() -> Guard | None:
    """The installed guard (for integrations hooked after install)."""
    return _state.guard


def status() -> list[dict[str, Any]]:
    """One JSON-serialisable record per guarded endpoint connguard has seen.

    Keys: endpoint, state (closed/open/half-open), guarded, priority, failures
    (consecutive), last_error, connect_budget (seconds), srtt, retry_after
    (seconds, None when closed), successes, failures_total, fast_failures,
    openings. Empty when not installed.
    """
    verify_patches()
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
