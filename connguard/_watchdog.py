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
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from ._tcp import SYN_SENT, TCP_CLOSE, tcp_state

__all__ = ["WATCHDOG_ABORTS", "Watchdog"]

log = logging.getLogger("connguard")

# shutdown() aborts a connect in progress on Linux; elsewhere connguard uses a
# socket timeout instead.
WATCHDOG_ABORTS = sys.platform == "linux"
_INTERVAL = 0.02  # the longest a late connect waits for the watchdog to notice
# After this many empty polls (1 s) the thread sleeps until the next watch() wakes
# it: an idle process is not woken 50 times a second, and a busy one pays no wake-up.
_IDLE_AFTER = 50
# A connect still CLOSE this long after it started never reached the kernel's SYN:
# something on the host holds it (a connect() reaches SYN_SENT within microseconds).
_HELD_AFTER = 0.005


class Watchdog:
    """Tracks blocking connects in flight and aborts the late ones."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.aborted = 0
        # id(socket) -> the connect's Ticket, whose .sock and .expires say what to watch
        self._inflight: dict[int, Any] = {}
        # Speculative connects (recovery probes) that yield to a connect held on the host.
        self._yielding: dict[int, tuple[Any, Callable[[], bool] | None]] = {}
        self.yielded = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._idle = False
        self._thread: threading.Thread | None = None

    # -- the hot path ------------------------------------------------------------------

    def watch(self, key: int, ticket: Any) -> None:
        """Watch ``ticket.sock`` until ``ticket.expires`` (the ticket is the record)."""
        self._inflight[key] = ticket
        if self._idle:
            self._idle = False
            self._wake.set()

    def unwatch(self, key: int) -> bool:
        """True when the connect is still ours; False when the watchdog aborted it."""
        return self._inflight.pop(key, None) is not None

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
        self._yielding.clear()
        if self._thread is not None:
            self._thread = None
            self.start()

    def _run(self) -> None:
        stop = self._stop
        quiet = 0
        while not stop.is_set():
            quiet = quiet + 1 if not (self._inflight or self._yielding) else 0
            if quiet >= _IDLE_AFTER:
                self._sleep_until_woken()
                quiet = 0
                continue
            if stop.wait(self._sleep()):
                return
            try:
                self._abort_late()
            except Exception:  # never let the watchdog die: deadlines depend on it
                log.exception("connguard watchdog error (continuing)")

    def _sleep_until_woken(self) -> None:
        self._idle = True
        if not (self._inflight or self._yielding):  # a racing watch() is seen here
            self._wake.wait()
        self._idle = False
        self._wake.clear()

    def _sleep(self) -> float:
        if not self._inflight:
            return _INTERVAL
        earliest: float = min(w.expires for w in list(self._inflight.values()))
        return min(_INTERVAL, max(0.0, earliest - self.clock()))

    def _abort_late(self) -> None:
        now = self.clock()
        for key, watch in list(self._inflight.items()):
            if watch.expires > now:
                continue
            state = tcp_state(watch.sock)
            if state == TCP_CLOSE:
                # Held on this host before its SYN left: not the endpoint's time yet.
                watch.expires = now + watch.deadline
                continue
            if state != SYN_SENT:
                continue  # connected or failed just now: the connecting thread reports
            if self._inflight.pop(key, None) is None:
                continue  # the connecting thread finished first
            try:
                watch.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.aborted += 1
        if self._yielding:
            held = self._someone_held(now)
            for key, (sock, preempted) in list(self._yielding.items()):
                if not (held or (preempted is not None and preempted())):
                    continue
                if tcp_state(sock) == SYN_SENT and self._yielding.pop(key, None) is not None:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    self.yielded += 1

    def _someone_held(self, now: float) -> bool:
        """Is a watched connect still CLOSE well after it started (held on the host)?"""
        for watch in list(self._inflight.values()):
            started = watch.expires - watch.deadline
            if now - started > _HELD_AFTER and tcp_state(watch.sock) == TCP_CLOSE:
                return True
        return False
