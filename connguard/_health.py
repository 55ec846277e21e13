"""Per-endpoint health: the circuit, the connect-time estimator, the bounded table.

A circuit is *closed* (connects go ahead), *open* (connects fail fast until
``retry_at``) or, once ``retry_at`` has passed, open with exactly one recovery
trial in flight (*half-open*). The estimator follows RFC 6298: ``srtt`` and
``rttvar`` of successful connect times give ``srtt + 4 * rttvar``, clamped to
the configured floor and ceiling, as the endpoint's connect budget.

Concurrency: the table is an ``OrderedDict`` read without the lock on the hot
path (a dict lookup is atomic); every mutation happens under ``HealthTable.lock``,
which is never held across I/O.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from ._endpoint import Endpoint, format_endpoint

__all__ = ["EndpointHealth", "HealthTable"]


class EndpointHealth:
    """Everything connguard knows about one endpoint."""

    __slots__ = (
        "background",
        "budget",
        "ceiling",
        "cheap_failures",
        "endpoint",
        "ever_connected",
        "failures",
        "failures_total",
        "fast_failures",
        "floor",
        "guarded",
        "is_open",
        "label",
        "last_errno",
        "last_error",
        "last_kind",
        "openings",
        "policy",
        "retry_at",
        "rttvar",
        "srtt",
        "successes",
        "trial_until",
        "used",
    )

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        guarded: bool,
        background: bool,
        floor: float,
        ceiling: float,
        policy: Any = None,
    ) -> None:
        self.endpoint = endpoint
        self.label = format_endpoint(endpoint)
        self.guarded = guarded
        self.background = background
        self.policy = policy  # per-endpoint extras (pre-check) for the prober
        self.floor = floor
        self.ceiling = ceiling
        self.budget = ceiling  # no evidence yet: the ceiling
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.is_open = False
        self.failures = 0  # consecutive connect-phase failures
        self.openings = 0  # consecutive openings without a success: drives the backoff
        self.retry_at = 0.0
        self.trial_until = 0.0  # a recovery trial is in flight until this time
        self.ever_connected = False
        self.last_error: str | None = None
        # Kind ("timeout", "refused", "unreachable") and errno of the last real failure:
        # a fast failure looks like it.
        self.last_kind: str | None = None
        self.last_errno: int | None = None
        self.cheap_failures = 0  # failures that cost no time: never counted toward opening
        self.successes = 0
        self.failures_total = 0
        self.fast_failures = 0
        self.used = True  # second-chance bit of the table's eviction (a cheap LRU)

    def observe_connect_time(self, seconds: float) -> None:
        """RFC 6298 smoothing of one successful connect time (on the hot path: kept lean)."""
        srtt = self.srtt
        if srtt is None:
            srtt = seconds
            rttvar = seconds / 2
        else:
            error = seconds - srtt
            rttvar = 0.75 * self.rttvar + 0.25 * (error if error >= 0 else -error)
            srtt += 0.125 * error
        self.srtt = srtt
        self.rttvar = rttvar
        budget = srtt + 4 * rttvar
        if budget < self.floor:
            budget = self.floor
        elif budget > self.ceiling:
            budget = self.ceiling
        self.budget = budget

    def state_name(self, now: float) -> str:
        if not self.is_open:
            return "closed"
        return "half-open" if self.trial_until > now else "open"

    def record(self, now: float) -> dict[str, Any]:
        """A JSON-serialisable snapshot (see ``connguard.status()``)."""
        return {
            "endpoint": self.label,
            "state": self.state_name(now),
            "guarded": self.guarded,
            "priority": "background" if self.background else "foreground",
            "failures": self.failures,
            "last_error": self.last_error,
            "last_failure_kind": self.last_kind,
            "connect_budget": round(self.budget, 6),
            "srtt": None if self.srtt is None else round(self.srtt, 6),
            "retry_after": round(max(0.0, self.retry_at - now), 3) if self.is_open else None,
            "successes": self.successes,
            "failures_total": self.failures_total,
            "fast_failures": self.fast_failures,
            "cheap_failures": self.cheap_failures,
            "openings": self.openings,
        }


class HealthTable:
    """A bounded table of ``EndpointHealth`` keyed by ``(host, port)``, LRU-like."""

    def __init__(self, capacity: int, clock: Callable[[], float]) -> None:
        self.capacity = capacity
        self.clock = clock
        self.lock = threading.Lock()
        self._entries: OrderedDict[Endpoint, EndpointHealth] = OrderedDict()
        # Bound method cached: this is the first thing every connect does.
        self.get = self._entries.get

    def add(self, health: EndpointHealth) -> EndpointHealth:
        """Insert unless another thread got there first; evict if over capacity."""
        with self.lock:
            existing = self._entries.get(health.endpoint)
            if existing is not None:
                return existing
            self._entries[health.endpoint] = health
            if len(self._entries) > self.capacity:
                self._evict()
            return health

    def _evict(self) -> None:
        """Second chance ("clock") eviction: close to LRU, without touching the hot path.

        Entries used since the last pass go to the back with their bit cleared; the
        first unused one from the front goes. One pass at most, so O(n) worst case
        only after n uses, O(1) amortised.
        """
        entries = self._entries
        for _ in range(len(entries)):
            endpoint, oldest = entries.popitem(last=False)
            if not oldest.used:
                return
            oldest.used = False
            entries[endpoint] = oldest
        entries.popitem(last=False)

    def remove(self, endpoint: Endpoint) -> None:
        with self.lock:
            self._entries.pop(endpoint, None)

    def clear(self) -> None:
        with self.lock:
            self._entries.clear()

    def snapshot(self) -> list[EndpointHealth]:
        with self.lock:
            return list(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[EndpointHealth]:
        return iter(self.snapshot())

    def renew_lock_after_fork(self) -> None:
        # The parent may have forked while another thread held the lock.
        self.lock = threading.Lock()
        now = self.clock()
        for health in self._entries.values():
            if health.trial_until > now:
                health.trial_until = 0.0  # the trial's thread did not survive the fork
