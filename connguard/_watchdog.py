"""One thread that aborts blocking connects which outlive their deadline.

Why not a socket timeout: ``settimeout()`` costs two ioctls, and a timed
connect adds a ``poll()`` and a ``getsockopt()``: about 2 µs on a 25 µs loopback
connect, paid by every healthy connect. Registering the connect here costs two
dict operations; the abort (``shutdown()``, which ends a SYN_SENT connect at
once on Linux and frees the half-open slot) is paid only by connects that are
already late.

Ownership of a late connect is decided by ``dict.pop``, which is atomic: the
connecting thread's ``unwatch()`` and the watchdog race for the entry, and
whoever pops it owns the outcome. A connect whose SYN has not left the host
when its deadline comes (held by local policy: a serializing security tool) is
not aborted; its deadline is counted again from then.

The watchdog cannot be turned against the application: every call it makes
into a socket (``getsockopt``, ``shutdown``) is contained; a socket that fails
(a subclass's own ``getsockopt``, or closed by another thread mid-connect) is
dropped from the watch with one log line and its connect goes on unwatched;
the loop never sleeps less than ``_MIN_SLEEP``; and a fault inside ``watch()``
or ``unwatch()`` never reaches the connect. A dropped watch is not an abort:
``unwatch()`` says False only for a connect the watchdog really shut down.

``CONNGUARD__WATCHDOG=0`` (read once, at import) is a testing switch: Linux
then applies deadlines with a socket timeout, the path other platforms take,
so that path is exercised by the test suite here too.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from ._tcp import SYN_SENT, TCP_CLOSE, read_tcp_state, shut_down, tcp_state

__all__ = ["WATCHDOG_ABORTS", "Watchdog"]

log = logging.getLogger("connguard")

# shutdown() aborts a connect in progress on Linux; elsewhere connguard uses a
# socket timeout instead. CONNGUARD__WATCHDOG=0 takes that path here (testing).
WATCHDOG_ABORTS = sys.platform == "linux" and os.environ.get("CONNGUARD__WATCHDOG") != "0"
_INTERVAL = 0.02  # the longest a late connect waits for the watchdog to notice
# Never poll faster than this, whatever the clock or a fault says: no busy-spin.
_MIN_SLEEP = 0.001
# A watched connect found connected (or failed) past its deadline is its thread's
# to report; if that thread never unwatches it (a fault), it is dropped after this.
_REPORT_GRACE = 1.0
# After this many empty polls (1 s) the thread sleeps until the next watch() wakes
# it: an idle process is not woken 50 times a second, and a busy one pays no wake-up.
_IDLE_AFTER = 50
# While idle, the thread still wakes this often to run on_idle (the displacement check:
# a replaced wrapper sends no connect through connguard that could wake us).
_IDLE_TICK = 5.0
# A connect still CLOSE this long after it started never reached the kernel's SYN:
# something on the host holds it (a connect() reaches SYN_SENT within microseconds).
_HELD_AFTER = 0.005


_GONE = -1  # the socket was closed, or failed when read: its watch ends


class Watchdog:
    """Tracks blocking connects in flight and aborts the late ones."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        # Called from the thread while idle (never per connect); set by install().
        self.on_idle: Callable[[], object] | None = None
        self.dropped = 0
        # id(socket) -> the connect's Ticket, whose .sock and .expires say what to watch
        self._inflight: dict[int, Any] = {}
        # Keys the watchdog took to abort (added before its pop): unwatch() tells an
        # abort from a watch that was dropped, or never made because watch() failed.
        self._aborting: set[int] = set()
        # Speculative connects (recovery probes) that yield to a connect held on the host.
        self._yielding: dict[int, tuple[Any, Callable[[], bool] | None]] = {}
        self.yielded = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._idle = False
        self._thread: threading.Thread | None = None
        self._logged: set[str] = set()

    # -- the hot path ------------------------------------------------------------------

    def watch(self, key: int, ticket: Any) -> None:
        """Watch ``ticket.sock`` until ``ticket.expires`` (the ticket is the record)."""
        try:
            self._inflight[key] = ticket
            if self._idle:
                self._idle = False
                self._wake.set()
        except Exception as exc:  # the connect goes ahead unwatched
            self._log_once("watch", exc)

    def unwatch(self, key: int) -> bool:
        """True when the connect is still ours; False when the watchdog aborted it."""
        try:
            if self._inflight.pop(key, None) is not None or key not in self._aborting:
                return True
            self._aborting.discard(key)
            return False
        except Exception as exc:
            self._log_once("unwatch", exc)
            return True  # a connect is never failed for connguard's own fault

    def yield_to_held(self, sock: Any, preempted: Callable[[], bool] | None = None) -> int:
        """Abort ``sock``'s SYN if a watched connect is held on the host meanwhile,
        or once ``preempted()`` turns true.

        Without the lane this is how a recovery probe gives way on a host that
        serializes connects: a caller's connect stuck before its SYN left (socket
        still CLOSE inside ``connect()``) means the probe holds the host's slot.
        With the lane, it makes a preemption stick when it lands in the instant
        before the preempted connect's SYN left (``shutdown()`` does nothing then).
        """
        key = id(sock)
        self._yielding[key] = (sock, preempted)
        if self._idle:
            self._idle = False
            self._wake.set()
        return key

    def stop_yielding(self, key: int) -> bool:
        """True when the connect ran undisturbed; False when it was aborted to yield."""
        return self._yielding.pop(key, None) is not None

    # -- the thread --------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop = threading.Event()
        self._idle = False
        self._thread = threading.Thread(target=self._run, name="connguard-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(1.0)

    def retire(self) -> None:
        """Stop once the connects in flight are over: each keeps its deadline.

        At ``uninstall()``: stopping at once would let a connect admitted just
        before run unbounded. With nothing in flight this is ``stop()``; otherwise a
        short-lived thread waits (bounded: twice the longest deadline, plus 1 s)
        and then stops the watchdog.
        """
        watches = list(self._inflight.values())
        if not watches and not self._yielding:
            self.stop()
            return
        longest = max((w.deadline or 0.0 for w in watches), default=0.0)
        give_up = time.monotonic() + 2 * longest + 1.0

        def stop_when_idle() -> None:
            while (self._inflight or self._yielding) and time.monotonic() < give_up:
                time.sleep(_INTERVAL)
            self.stop()

        threading.Thread(
            target=stop_when_idle, name="connguard-watchdog-retire", daemon=True
        ).start()

    def after_fork(self) -> None:
        """In a child: the parent's thread and connects did not come along."""
        self._inflight.clear()
        self._aborting.clear()
        self._yielding.clear()
        if self._thread is not None:
            self._thread = None
            self.start()

    def _run(self) -> None:
        stop = self._stop
        quiet = 0
        while not stop.is_set():
            sleep = _INTERVAL
            try:
                quiet = quiet + 1 if not (self._inflight or self._yielding) else 0
                if quiet >= _IDLE_AFTER:
                    self._sleep_until_woken()
                    quiet = 0
                    continue
                sleep = self._sleep()
            except Exception as exc:
                self._log_once("loop", exc)
            if stop.wait(max(_MIN_SLEEP, sleep)):
                return
            try:
                self._abort_late()
            except Exception as exc:  # never let the watchdog die: deadlines depend on it
                self._log_once("loop", exc)

    def _sleep_until_woken(self) -> None:
        """Sleep until a watch() wakes us, ticking ``on_idle`` every ``_IDLE_TICK`` s."""
        self._idle = True
        while not (self._inflight or self._yielding):  # a racing watch() is seen here
            if self._wake.wait(_IDLE_TICK) or self._stop.is_set():
                break
            tick = self.on_idle
            if tick is not None:
                try:
                    tick()
                except Exception as exc:
                    self._log_once("idle tick", exc)
        self._idle = False
        self._wake.clear()

    def _sleep(self) -> float:
        if not self._inflight:
            return _INTERVAL
        earliest: float = min(w.expires for w in list(self._inflight.values()))
        return min(_INTERVAL, earliest - self.clock())

    def _log_once(self, where: str, exc: BaseException) -> None:
        """One line per kind of fault, never a flood: the app's logs are not ours to fill."""
        kind = f"{where}:{type(exc).__name__}"
        if kind not in self._logged:
            self._logged.add(kind)
            log.error("connguard watchdog: %s failed (%r); carrying on", where, exc)

    def _state(self, sock: Any) -> int | None:
        """The socket's TCP state; ``_GONE`` when it is closed or its read fails."""
        try:
            if sock.fileno() == -1:
                return _GONE  # closed by another thread mid-connect
            return read_tcp_state(sock)
        except OSError:
            return _GONE  # EBADF: closed between the two calls
        except Exception as exc:  # a subclass's own getsockopt, say
            log.warning(
                "connguard watchdog: cannot read the TCP state of %s (%r); its connect is "
                "no longer watched",
                type(sock).__name__,
                exc,
            )
            return _GONE

    def _drop(self, key: int) -> None:
        """End a watch without aborting: the connect goes on, unwatched."""
        if self._inflight.pop(key, None) is not None:
            self.dropped += 1

    def _abort_late(self) -> None:
        now = self.clock()
        for key, watch in list(self._inflight.items()):
            try:
                self._check(key, watch, now)
            except Exception as exc:
                self._log_once("check", exc)
                self._drop(key)
        if self._yielding:
            held = self._someone_held(now)
            for key, (sock, preempted) in list(self._yielding.items()):
                try:
                    if not (held or (preempted is not None and preempted())):
                        continue
                    if tcp_state(sock) == SYN_SENT and self._yielding.pop(key, None) is not None:
                        shut_down(sock)
                        self.yielded += 1
                except Exception as exc:
                    self._log_once("yield", exc)
                    self._yielding.pop(key, None)

    def _check(self, key: int, watch: Any, now: float) -> None:
        if watch.expires > now:
            return
        state = self._state(watch.sock)
        if state == _GONE:
            self._drop(key)
            return
        if state == TCP_CLOSE:
            # Held on this host before its SYN left: not the endpoint's time yet.
            watch.expires = now + watch.deadline
            return
        if state != SYN_SENT and state is not None:
            # Connected or failed just now: the connecting thread reports. One that
            # never does (a fault in unwatch) must not be polled forever.
            if now - watch.expires > _REPORT_GRACE:
                self._drop(key)
            return
        # SYN_SENT (or unknown: no TCP_INFO here) and late: abort it.
        self._aborting.add(key)  # before the pop, so unwatch() sees an abort either way
        popped = self._inflight.pop(key, None)
        if popped is not watch:
            self._aborting.discard(key)  # the connecting thread finished first
            if popped is not None:  # ...and the same socket is already connecting again
                self._inflight[key] = popped
            return
        shut_down(watch.sock)

    def _someone_held(self, now: float) -> bool:
        """Is a watched connect still CLOSE well after it started (held on the host)?"""
        for watch in list(self._inflight.values()):
            started = watch.expires - watch.deadline
            if now - started > _HELD_AFTER and tcp_state(watch.sock) == TCP_CLOSE:
                return True
        return False
