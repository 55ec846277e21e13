"""The connect lane: at most N guarded connects at a time, foreground first.

On a host that serializes connects (a security tool lets one connect of the
process be in SYN_SENT at a time), the slot is the scarce resource: a
background connect to a dead collector holds it for a whole deadline while a
login waits. With ``CONNGUARD_MAX_INFLIGHT_CONNECTS=N`` connguard hands out the
slots itself:

- foreground waiters are served before background ones, FIFO within a class;
  a slot that frees is handed to the next waiter directly (no barging);
- a foreground connect that finds every slot busy preempts a background holder:
  its slot is handed over at once and the holder's ``abort`` callback
  (``shutdown()`` of a SYN_SENT socket) ends its connect; the holder sees
  ``slot.preempted`` and retries within its own deadline;
- a waiter that the lane cannot serve in time fails fast with ``LaneTimeout``
  (a ``TimeoutError``), without sending a SYN.

The lane is core: it knows no integration. Integrations call ``acquire`` (threads)
or ``acquire_async`` (asyncio; never blocks the loop) and always ``release``.
The lock is never held across I/O or a callback.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from ._errors import LaneTimeout

if TYPE_CHECKING:
    import asyncio

__all__ = ["Lane", "Slot", "expected_seconds", "outer_ticket", "reserve_seconds"]

log = logging.getLogger("connguard")

# Seconds between two log lines of one kind (saturation, preemption).
_LOG_EVERY = 10.0
# A holder that never released (a bug above us) is reclaimed this long after its
# own deadline, so one lost release cannot close the lane for good.
_LEASE_GRACE = 1.0
# A waiter looks for such lost slots this often while it waits.
_REAP_EVERY = 0.25

# The ticket of the last ``Guard.admit`` in this context, set only while a lane
# exists: a socket-level connect made for an outer integration (httpx, ldap3 with
# ``admitted_above``) waits in the lane for that ticket and reports its queue time.
outer_ticket: ContextVar[Any] = ContextVar("connguard_outer_ticket", default=None)

# True while this context already holds a slot for the connect it is about to make
# (the prober): the socket wrapper must not queue a second time.
holding: ContextVar[bool] = ContextVar("connguard_lane_holding", default=False)


class Slot:
    """One place in the lane, held from acquire to release."""

    __slots__ = ("abort", "background", "expected", "label", "lease_end", "preempted", "started")

    def __init__(
        self,
        label: str,
        background: bool,
        expected: float,
        started: float,
        lease_end: float | None,
        abort: Callable[[], None] | None,
    ) -> None:
        self.label = label
        self.background = background
        self.expected = expected  # seconds this connect is expected to take
        self.started = started
        self.lease_end = lease_end
        self.abort = abort  # ends the connect at once (shutdown); None: not preemptible
        self.preempted = False


class _Waiter:
    __slots__ = ("abort", "background", "expected", "label", "lease", "slot", "wake")

    def __init__(
        self,
        label: str,
        background: bool,
        expected: float,
        lease: float | None,
        abort: Callable[[], None] | None,
        wake: Callable[[], None],
    ) -> None:
        self.label = label
        self.background = background
        self.expected = expected
        self.lease = lease
        self.abort = abort
        self.wake = wake
        self.slot: Slot | None = None


def expected_seconds(health: Any, timeout: float) -> float:
    """How long a connect to this endpoint will probably hold its slot.

    A failing or open endpoint holds it for its whole timeout; a healthy one for
    its smoothed connect time; an unknown one optimistically for no time at all
    (first contacts must not be refused on a guess).
    """
    if health.failures or health.is_open:
        return timeout
    srtt: float | None = health.srtt
    return 0.0 if srtt is None else min(timeout, srtt)


def reserve_seconds(health: Any, timeout: float) -> float:
    """Connect time a waiter keeps for itself: it leaves the queue when only this is left."""
    srtt: float | None = health.srtt
    need = 0.1 if srtt is None else max(0.005, 4 * srtt)
    return min(timeout / 2, need)


class Lane:
    """N slots, two priority classes, preemption of background holders."""

    def __init__(self, slots: int, clock: Callable[[], float] = time.monotonic) -> None:
        if slots < 1:
            raise ValueError("a lane needs at least one slot")
        self.slots = slots
        self.clock = clock
        self._lock = threading.Lock()
        self._holders: list[Slot] = []
        self._foreground: deque[_Waiter] = deque()
        self._background: deque[_Waiter] = deque()
        self.granted = 0
        self.queued = 0
        self.preemptions = 0
        self.timeouts = 0
        self.max_wait = 0.0
        self._logged: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    # -- acquiring --------------------------------------------------------------------

    def acquire(
        self,
        label: str,
        *,
        background: bool,
        timeout: float | None,
        expected: float = 0.0,
        reserve: float = 0.0,
        abort: Callable[[], None] | None = None,
    ) -> Slot:
        """Block until a slot is ours; raise ``LaneTimeout`` when it cannot come in time.

        ``timeout`` is what is left of the connect's own budget (None: no bound);
        the waiter gives up when only ``reserve`` of it is left, or at once when
        the queue ahead is predicted to take longer than that.
        """
        event = threading.Event()
        waiter = _Waiter(label, background, expected, timeout, abort, event.set)
        started = self.clock()
        slot, victim = self._enter(waiter, started, reserve)
        if victim is not None:
            self._preempt(victim, label)
        if slot is not None:
            return slot
        give_up = None if timeout is None else started + max(0.0, timeout - reserve)
        while not event.wait(self._chunk(give_up)):
            if give_up is not None and self.clock() >= give_up:
                break
            self._reap()
        return self._after_wait(waiter, started, timeout)

    async def acquire_async(
        self,
        label: str,
        *,
        background: bool,
        timeout: float | None,
        expected: float = 0.0,
        reserve: float = 0.0,
        abort: Callable[[], None] | None = None,
    ) -> Slot:
        """``acquire`` for asyncio: waits on a future, so the event loop keeps running."""
        import asyncio  # here, not at import: most processes never need it

        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            loop.call_soon_threadsafe(_resolve, future)

        waiter = _Waiter(label, background, expected, timeout, abort, wake)
        started = self.clock()
        slot, victim = self._enter(waiter, started, reserve)
        if victim is not None:
            self._preempt(victim, label)
        if slot is not None:
            return slot
        give_up = None if timeout is None else started + max(0.0, timeout - reserve)
        while not future.done():
            try:
                await asyncio.wait_for(asyncio.shield(future), self._chunk(give_up))
            except asyncio.TimeoutError:
                if give_up is not None and self.clock() >= give_up:
                    break
                self._reap()
            except BaseException:  # cancelled: give back a slot granted meanwhile
                self._withdraw(waiter)
                raise
        return self._after_wait(waiter, started, timeout)

    def _chunk(self, give_up: float | None) -> float:
        if give_up is None:
            return _REAP_EVERY
        return max(0.0, min(_REAP_EVERY, give_up - self.clock()))

    def _reap(self) -> None:
        """Reclaim slots whose holder never released them and hand them on."""
        now = self.clock()
        with self._lock:
            self._reclaim(now)
            wake = self._dispatch(now)
        for fn in wake:
            _call(fn)

    def release(self, slot: Slot) -> None:
        """Give the slot back (a no-op for a preempted or reclaimed slot); never raises."""
        with self._lock:
            try:
                self._holders.remove(slot)
            except ValueError:
                return
            wake = self._dispatch(self.clock())
        for fn in wake:
            _call(fn)

    # -- inside the lock ----------------------------------------------------------------

    def _enter(
        self, waiter: _Waiter, now: float, reserve: float
    ) -> tuple[Slot | None, Slot | None]:
        """Grant, preempt or enqueue; raise ``LaneTimeout`` when the wait cannot fit."""
        with self._lock:
            if len(self._holders) >= self.slots:
                self._reclaim(now)
            queue_ahead = self._foreground or (waiter.background and self._background)
            if len(self._holders) < self.slots and not queue_ahead:
                return self._grant(waiter, now), None
            if not waiter.background and not self._foreground:
                victim = self._victim()
                if victim is not None:
                    victim.preempted = True
                    self._holders.remove(victim)
                    self.preemptions += 1
                    return self._grant(waiter, now), victim
            if waiter.lease is not None:
                predicted = self._predicted_wait(waiter.background, now)
                if predicted + reserve > waiter.lease:
                    self.timeouts += 1
                    raise self._timeout(waiter, predicted, at_once=True)
            (self._background if waiter.background else self._foreground).append(waiter)
            self.queued += 1
            busy, queued = len(self._holders), len(self._foreground) + len(self._background)
        self._rate_limited_log(
            "saturated",
            "connect lane saturated: %d/%d slots busy, %d queued (%s waits)",
            busy,
            self.slots,
            queued,
            waiter.label,
        )
        return None, None

    def _grant(self, waiter: _Waiter, now: float) -> Slot:
        lease_end = None if waiter.lease is None else now + waiter.lease + _LEASE_GRACE
        slot = Slot(waiter.label, waiter.background, waiter.expected, now, lease_end, waiter.abort)
        self._holders.append(slot)
        self.granted += 1
        waiter.slot = slot
        return slot

    def _victim(self) -> Slot | None:
        """The oldest background holder that can be aborted."""
        for slot in self._holders:
            if slot.background and slot.abort is not None:
                return slot
        return None

    def _dispatch(self, now: float) -> list[Callable[[], None]]:
        """Hand free slots to the next waiters; return their wake-ups."""
        wake = []
        while len(self._holders) < self.slots and (self._foreground or self._background):
            waiter = (self._foreground or self._background).popleft()
            self._grant(waiter, now)
            wake.append(waiter.wake)
        return wake

    def _reclaim(self, now: float) -> None:
        for slot in [s for s in self._holders if s.lease_end is not None and s.lease_end < now]:
            self._holders.remove(slot)
            log.error("connect lane: reclaimed a slot of %s that was never released", slot.label)

    def _predicted_wait(self, background: bool, now: float) -> float:
        """When the lane would serve a new waiter, from the holders' expected ends."""
        frees = [0.0] * (self.slots - len(self._holders))
        for slot in self._holders:
            preemptible = slot.background and slot.abort is not None and not background
            frees.append(0.0 if preemptible else max(0.0, slot.started + slot.expected - now))
        heapq.heapify(frees)
        ahead = list(self._foreground) + (list(self._background) if background else [])
        for waiter in ahead:
            heapq.heappush(frees, heapq.heappop(frees) + waiter.expected)
        return frees[0]

    def _withdraw(self, waiter: _Waiter) -> None:
        """A waiter leaves: out of the queue, or its slot goes back if granted meanwhile."""
        with self._lock:
            slot = waiter.slot
            if slot is None:
                queue = self._background if waiter.background else self._foreground
                try:
                    queue.remove(waiter)
                except ValueError:
                    pass
                return
            waiter.slot = None
        self.release(slot)

    # -- outside the lock ---------------------------------------------------------------

    def _after_wait(self, waiter: _Waiter, started: float, timeout: float | None) -> Slot:
        waited = self.clock() - started
        with self._lock:
            self.max_wait = max(self.max_wait, waited)
            slot = waiter.slot
            if slot is None:
                queue = self._background if waiter.background else self._foreground
                try:
                    queue.remove(waiter)
                except ValueError:
                    pass
                self.timeouts += 1
        if slot is not None:
            return slot
        raise self._timeout(waiter, waited, at_once=False)

    def _timeout(self, waiter: _Waiter, seconds: float, *, at_once: bool) -> LaneTimeout:
        what = (
            f"the queue ahead needs about {seconds:.3f} s"
            if at_once
            else f"no slot came free in {seconds:.3f} s"
        )
        budget = waiter.lease if waiter.lease is not None else 0.0
        return LaneTimeout(
            f"connguard: connect to {waiter.label} not started: the connect lane "
            f"({self.slots} slot(s)) is busy and {what}, more than its remaining "
            f"deadline of {budget:.3f} s allows; no SYN was sent",
            waiter.label,
            budget,
        )

    def _preempt(self, victim: Slot, by: str) -> None:
        self._rate_limited_log(
            "preempted",
            "connect lane: preempted background connect to %s for foreground %s",
            victim.label,
            by,
        )
        if victim.abort is not None:
            _call(victim.abort)

    def _rate_limited_log(self, kind: str, message: str, *args: Any) -> None:
        now = self.clock()
        if now - self._logged.get(kind, -_LOG_EVERY) < _LOG_EVERY:
            self._unlogged[kind] = self._unlogged.get(kind, 0) + 1
            return
        self._logged[kind] = now
        skipped = self._unlogged.pop(kind, 0)
        suffix = f" ({skipped} more like this not logged)" if skipped else ""
        log.warning(message + suffix, *args)

    # -- management ---------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot (see ``connguard.lane_status()``)."""
        with self._lock:
            return {
                "slots": self.slots,
                "in_use": len(self._holders),
                "in_use_background": sum(1 for s in self._holders if s.background),
                "queued_foreground": len(self._foreground),
                "queued_background": len(self._background),
                "granted": self.granted,
                "waited": self.queued,
                "preemptions": self.preemptions,
                "lane_timeouts": self.timeouts,
                "max_wait": round(self.max_wait, 6),
            }

    def after_fork(self) -> None:
        """In a child: the holders' and waiters' threads did not survive the fork."""
        self._lock = threading.Lock()
        self._holders = []
        self._foreground = deque()
        self._background = deque()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _call(fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception:  # a closed event loop, a socket gone: never break the caller
        log.debug("connect lane: callback failed", exc_info=True)
