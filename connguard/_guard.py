"""The decision every guarded connect goes through.

``Guard.admit(host, port)`` either raises ``EndpointUnavailable`` at once (the
circuit is open), returns ``None`` (the endpoint is not guarded, or connguard
itself failed and steps aside) or returns a ``Ticket`` carrying the connect
deadline. The integration connects, then reports the outcome on the ticket:
``succeeded(elapsed)``, ``failed(exc, elapsed=...)`` or ``abandoned()``.

Only evidence that cost a caller time counts: a timeout always, a refusal or an
unreachable answer only when it took ``costly_failure`` seconds or more (a
0.1 ms refusal is answered as fast as connguard could fail, so failing fast
would save nothing and only delay the moment a restarting server is reached).

The guard knows no integration. Decide under the lock, release it, connect,
record under the lock; log after releasing it.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import time
import weakref
from collections.abc import Callable
from typing import Any

from ._config import Config, Override
from ._endpoint import Endpoint
from ._errors import EndpointUnavailable, LaneTimeout, unavailable_error
from ._gate import Lane, outer_ticket
from ._health import EndpointHealth, HealthTable
from ._watchdog import Watchdog

__all__ = ["Guard", "Ticket", "classify_failure"]

log = logging.getLogger("connguard")

# errnos of a connect that reached no listener: the endpoint's fault, not ours.
_UNREACHABLE_ERRNOS = frozenset(
    {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN, errno.ETIMEDOUT}
)


_NOT_EVIDENCE = (EndpointUnavailable, LaneTimeout)
_IN_PROGRESS = (BlockingIOError, InterruptedError)


def classify_failure(exc: BaseException) -> str | None:
    """``"timeout"``, ``"refused"``, ``"unreachable"``, or None when not the endpoint's fault.

    ``BlockingIOError`` (a non-blocking connect in progress), interrupted calls,
    local errors (``EADDRNOTAVAIL``, ``EACCES``…) and anything not an ``OSError``
    are never counted against an endpoint.
    """
    if isinstance(exc, ConnectionRefusedError) and not isinstance(exc, EndpointUnavailable):
        return "refused"  # first: the commonest failure, checked on a hot-ish path
    if isinstance(exc, _NOT_EVIDENCE) or not isinstance(exc, OSError):
        return None  # LaneTimeout: queued in the connect lane, the connect never started
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, _IN_PROGRESS):
        return None
    if exc.errno in _UNREACHABLE_ERRNOS:
        return "unreachable"
    return None


def _valid_endpoint(host: object, port: object) -> bool:
    """A TCP endpoint worth remembering; anything else passes through untouched."""
    return (
        type(host) is str
        and host != ""
        and "\x00" not in host
        and type(port) is int
        and 0 <= port <= 65535
    )


def _log_cleared(health: EndpointHealth, kind: str, elapsed: float | None) -> None:
    log.warning(
        "%s: closed, endpoint answers at once (%s in %.3f s); failing fast saves nothing",
        health.label,
        kind,
        elapsed or 0.0,
    )


class Ticket:
    """Permission for one connect, with its deadline; report exactly one outcome."""

    __slots__ = ("deadline", "expires", "guard", "health", "sock", "trial")

    # Set by an integration that hands the connect to the watchdog.
    sock: Any
    expires: float

    def __init__(self, guard: Guard, health: EndpointHealth, deadline: float | None, trial: bool):
        self.guard = guard
        self.health = health
        # None in observe mode: connguard must not change the connect.
        self.deadline = deadline
        self.trial = trial

    @property
    def endpoint(self) -> Endpoint:
        return self.health.endpoint

    @property
    def label(self) -> str:
        return self.health.label

    def succeeded(self, elapsed: float) -> None:
        """The connect completed after ``elapsed`` seconds of connecting."""
        health = self.health
        try:
            if health.failures or self.trial or health.is_open or not health.ever_connected:
                self.guard._record_success(self, elapsed)
            else:
                # The hot path: nothing changes state, so no lock. A race with another
                # success can drop one sample or count, never corrupt the state.
                health.observe_connect_time(elapsed)
                health.successes += 1
                health.used = True
        except Exception as exc:
            self.guard.contain("record_success", exc)

    def failed(
        self, exc: BaseException, *, elapsed: float | None = None, left_host: bool = True
    ) -> None:
        """The connect failed with ``exc`` after ``elapsed`` seconds of connecting.

        ``elapsed`` None means unknown, taken as costly. ``left_host=False`` says
        the connect never left this host (it was held by local policy, e.g. a
        security tool serializing connects): a timeout then says nothing about
        the endpoint and is not counted.
        """
        try:
            self.guard._record_failure(self, exc, left_host, elapsed)
        except Exception as internal:
            self.guard.contain("record_failure", internal)

    def timed_out(
        self, exc: BaseException, caller_timeout: float | None, *, left_host: bool = True
    ) -> None:
        """The connect hit a timeout connguard did not impose: ``caller_timeout``.

        A caller's own timeout shorter than what connguard would have allowed (the
        endpoint's budget) says nothing about the endpoint: no outcome. Otherwise it
        is a timeout of the endpoint.
        """
        if caller_timeout is not None and caller_timeout < self.health.budget:
            self.abandoned()
        else:
            self.failed(exc, left_host=left_host)

    def abandoned(self) -> None:
        """No outcome will be known (non-blocking connect, cancellation…)."""
        if self.trial:
            self.health.trial_until = 0.0
            self.trial = False


class LaneTicket(Ticket):
    """A ticket handed out while the connect lane is on (``Guard.gate`` set).

    ``queued`` is the time a socket-level connect spent waiting in the lane for
    an outer integration's ticket (httpx, ldap3): it is not connect time, so it is
    taken out of the elapsed time the integration reports.
    """

    __slots__ = ("queued",)

    def __init__(self, ticket: Ticket) -> None:
        super().__init__(ticket.guard, ticket.health, ticket.deadline, ticket.trial)
        self.queued = 0.0

    def succeeded(self, elapsed: float) -> None:
        super().succeeded(max(0.0, elapsed - self.queued))


_GUARDS: weakref.WeakSet[Guard] = weakref.WeakSet()


def _renew_after_fork() -> None:
    for guard in list(_GUARDS):
        guard.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_after_fork)


class Guard:
    """Decides and records. One per ``install()``; bound into every wrapper."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.clock = clock
        self.rng = rng
        self.enforce = config.mode == "enforce"
        self.costly_failure = config.costly_failure  # read by every failure: one lookup
        self.table = HealthTable(config.max_endpoints, clock)
        # When a background prober owns recovery, callers never become trials.
        self.callers_may_trial = True
        # The connect lane (CONNGUARD_MAX_INFLIGHT_CONNECTS > 0), or None: no gate.
        self.gate: Lane | None = None
        # Called (outside the lock) when a circuit opens: wakes the background prober.
        self.on_open: Callable[[], None] | None = None
        # CONNGUARD_PRECHECK_FIRST_CONTACT: run before the first connect to a new endpoint
        # (returns, or raises EndpointUnavailable having opened the circuit). Set by install().
        self.first_contact: Callable[[Ticket], None] | None = None
        # Aborts blocking connects that outlive their deadline (started by install()).
        self.watchdog = Watchdog(clock)
        self._contained: set[str] = set()
        _GUARDS.add(self)
        if config.max_inflight_connects > 0 and self.enforce:
            self.gate = Lane(config.max_inflight_connects, clock)
            # Only with a lane (no cost without): tickets that carry their queue time.
            self.admit = self._admit_in_lane  # type: ignore[method-assign]

    # -- the hot path -----------------------------------------------------------------

    def admit(self, host: str, port: int) -> Ticket | None:
        """Fail fast, or hand out a ticket with a deadline; None means "step aside"."""
        try:
            health = self.table.get((host, port))
            if health is None:
                if not _valid_endpoint(host, port):
                    return None  # the real call raises its own error; nothing to remember
                health = self.table.add(self._new_health((host, port)))
            if not health.guarded:
                return None
            if not health.is_open:
                return Ticket(self, health, health.budget if self.enforce else None, False)
            return self._admit_open(health)
        except EndpointUnavailable:
            raise
        except Exception as exc:
            self.contain("admit", exc)
            return None

    def _admit_in_lane(self, host: str, port: int) -> Ticket | None:
        plain = Guard.admit(self, host, port)
        ticket = None if plain is None else LaneTicket(plain)
        # A socket-level connect below an outer integration finds its ticket here.
        outer_ticket.set(ticket)
        return ticket

    def _admit_open(self, health: EndpointHealth) -> Ticket | None:
        now = self.clock()
        with self.table.lock:
            if not health.is_open:  # closed by another thread meanwhile
                return Ticket(self, health, health.budget if self.enforce else None, False)
            if self._trial_due(health, now):
                # Exactly one caller tries; the lease ends if its thread never reports.
                health.trial_until = now + 2 * health.ceiling
                trial = True
            else:
                trial = False
                health.fast_failures += 1
            retry_after = max(0.0, health.retry_at - now)
        if trial:
            log.info("%s: recovery trial (one connect allowed)", health.label)
            return Ticket(self, health, health.budget if self.enforce else None, True)
        if not self.enforce:
            if health.fast_failures == 1 or health.fast_failures % 1000 == 0:
                log.warning(
                    "%s: observe mode, would fail fast (%d so far)",
                    health.label,
                    health.fast_failures,
                )
            return Ticket(self, health, None, False)
        raise unavailable_error(
            health.last_kind,
            health.last_errno,
            f"connguard: {health.label} is unavailable "
            f"(last error: {health.last_error}); retry in {retry_after:.1f} s",
            health.label,
            retry_after,
        )

    def _trial_due(self, health: EndpointHealth, now: float) -> bool:
        """May a caller's connect be the recovery trial of this open circuit now?"""
        return self.callers_may_trial and now >= health.retry_at and health.trial_until <= now

    def refuses(self, host: str, port: int) -> bool:
        """Would ``admit`` fail fast right now? Reads without the lock, changes nothing.

        False whenever a recovery trial is due, so that the trial goes to a real
        connect and a recovered endpoint is found.
        """
        health = self.table.get((host, port))
        if health is None or not health.is_open or not self.enforce:
            return False
        return not self._trial_due(health, self.clock())

    # -- outcomes ---------------------------------------------------------------------

    def _record_success(self, ticket: Ticket, elapsed: float) -> None:
        health = ticket.health
        with self.table.lock:
            health.observe_connect_time(elapsed)
            health.successes += 1
            health.failures = 0
            health.ever_connected = True
            was_open = health.is_open
            health.is_open = False
            health.openings = 0
            if ticket.trial:
                health.trial_until = 0.0
            health.used = True
        if was_open:
            log.warning(
                "%s: closed, endpoint is reachable again (connect %.3f s)", health.label, elapsed
            )

    def _record_failure(
        self, ticket: Ticket, exc: BaseException, left_host: bool, elapsed: float | None
    ) -> None:
        kind = classify_failure(exc)
        health = ticket.health
        if kind is None or (kind == "timeout" and not left_host):
            ticket.abandoned()
            return
        if (
            kind != "timeout"
            and elapsed is not None
            and elapsed < self.costly_failure
            and not (ticket.trial or health.is_open)
        ):
            # The common cheap case (a refused port on a closed circuit) changes no
            # circuit state: no lock, as on the success path (a race drops a count at
            # most), and the message is formatted only when the failure changes.
            health.cheap_failures += 1
            health.failures_total += 1
            health.used = True
            code = getattr(exc, "errno", None)
            if code != health.last_errno or kind != health.last_kind:
                health.last_kind = kind
                health.last_errno = code
                health.last_error = f"{kind}: {type(exc).__name__}: {exc}"
            return
        costly = kind == "timeout" or elapsed is None or elapsed >= self.costly_failure
        now = self.clock()
        with self.table.lock:
            health.failures_total += 1
            health.last_error = f"{kind}: {type(exc).__name__}: {exc}"
            health.last_kind = kind
            health.last_errno = getattr(exc, "errno", None)
            health.used = True
            if ticket.trial:
                health.trial_until = 0.0
            if not costly:
                # Answered at once: failing fast would save nothing. Not counted, and
                # an open circuit closes (its endpoint answers as fast as we could).
                health.cheap_failures += 1
                cleared = self._clear(health)
                opening = reopen = False
            else:
                cleared = False
                health.failures += 1
                reopen = health.is_open and ticket.trial
                opening = not health.is_open and (
                    health.failures >= self.config.failure_threshold or not health.ever_connected
                )
                wait = 0.0
                if reopen or opening:
                    wait = self._backoff(health.openings)
                    health.openings += 1
                    health.is_open = True
                    health.retry_at = now + wait
        if cleared:
            _log_cleared(health, kind, elapsed)
        elif opening:
            log.warning(
                "%s: opened after %d consecutive costly failure(s), last %s; "
                "failing fast, retry in %.1f s",
                health.label,
                health.failures,
                health.last_error,
                wait,
            )
        elif reopen:
            log.warning(
                "%s: recovery trial failed (%s); retry in %.1f s",
                health.label,
                health.last_error,
                wait,
            )
        if (opening or reopen) and self.on_open is not None:
            self.on_open()

    @staticmethod
    def _clear(health: EndpointHealth) -> bool:
        """Close ``health``'s circuit without a success (under the lock); True if it was open."""
        was_open = health.is_open
        if was_open:
            health.is_open = False
            health.openings = 0
            health.failures = 0
            health.trial_until = 0.0
        return was_open

    def answered_at_once(self, health: EndpointHealth, exc: BaseException, elapsed: float) -> bool:
        """A recovery probe got ``exc`` after ``elapsed`` s: close the circuit if it was cheap."""
        kind = classify_failure(exc)
        if kind is None or kind == "timeout" or elapsed >= self.config.costly_failure:
            return False
        with self.table.lock:
            health.last_error = f"{kind}: {type(exc).__name__}: {exc}"
            health.last_kind = kind
            health.last_errno = getattr(exc, "errno", None)
            cleared = self._clear(health)
        if cleared:
            _log_cleared(health, kind, elapsed)
        return True

    def _backoff(self, openings: int) -> float:
        """Exponential, +-20 % jitter so that many processes do not probe in step."""
        cfg = self.config
        base = min(cfg.max_open_seconds, cfg.open_seconds * 2.0 ** min(openings, 32))
        return min(cfg.max_open_seconds, base * (0.8 + 0.4 * self.rng()))

    # -- policy -----------------------------------------------------------------------

    def _new_health(self, endpoint: Endpoint) -> EndpointHealth:
        cfg = self.config
        host, port = endpoint
        guarded = (not cfg.include or any(p.matches(host, port) for p in cfg.include)) and not any(
            p.matches(host, port) for p in cfg.exclude
        )
        background = any(p.matches(host, port) for p in cfg.background)
        ceiling = cfg.connect_timeout
        override = self.override_for(endpoint)
        if override is not None:
            if override.background is not None:
                background = override.background
            if override.connect_timeout is not None:
                ceiling = override.connect_timeout
        return EndpointHealth(
            endpoint,
            guarded=guarded,
            background=background,
            floor=min(cfg.min_connect_timeout, ceiling),
            ceiling=ceiling,
            policy=override,
        )

    def override_for(self, endpoint: Endpoint) -> Override | None:
        """The first ``CONNGUARD_OVERRIDES`` entry matching ``endpoint``."""
        for override in self.config.overrides:
            if override.pattern.matches(*endpoint):
                return override
        return None

    # -- management -------------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        now = self.clock()
        return [h.record(now) for h in self.table.snapshot() if h.guarded]

    def reset(self, endpoint: Endpoint | None = None) -> None:
        if endpoint is None:
            self.table.clear()
        else:
            self.table.remove(endpoint)

    def contain(self, where: str, exc: BaseException) -> None:
        """An internal fault: the caller's connect goes ahead unguarded; log once per kind."""
        key = f"{where}:{type(exc).__name__}"
        if key not in self._contained:
            self._contained.add(key)
            log.error(
                "connguard internal error in %s; this connect goes ahead unguarded",
                where,
                exc_info=exc,
            )

    def after_fork(self) -> None:
        self.table.renew_lock_after_fork()
        self.watchdog.after_fork()
        if self.gate is not None:
            self.gate.after_fork()
