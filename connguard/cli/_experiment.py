"""doctor's two-connect experiment: does a connect wait behind unanswered ones?

Start k blocking connects to a dead target (SYNs never answered), then one to a
live target, and see whether it waits; the first k that makes it wait is the
number of connect slots. Plain sockets only: connguard is not installed here.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from .._endpoint import format_endpoint
from ._common import error_text

Target = tuple[socket.AddressFamily, tuple[str, int]]

_SETTLE = 0.2  # lets the dead connects' SYNs leave (and fill the slots) before the live one
_RELEASE_CONFIRMS = 0.5  # a live connect going through this soon after the abort was held
_ABORT_WINDOW = 2.0  # bound on tearing a round down
_EXTRA_SOCKET_TIMEOUT = 5.0  # our sockets' own bound beyond the hold: we abort them first


class _Connect:
    """One blocking connect running in its own thread, abortable with shutdown()."""

    def __init__(self, family: socket.AddressFamily, address: tuple[str, int], timeout: float):
        self.address = address
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.started = threading.Event()
        self.finished = threading.Event()
        self.t0 = 0.0
        self.t1 = 0.0
        self.error: OSError | None = None
        self.thread = threading.Thread(target=self._run, name="connguard-doctor", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.t0 = time.monotonic()
        self.started.set()
        try:
            self.sock.connect(self.address)
        except OSError as exc:
            self.error = exc
        finally:
            self.t1 = time.monotonic()
            self.finished.set()

    @property
    def elapsed(self) -> float | None:
        return self.t1 - self.t0 if self.finished.is_set() else None

    def abort(self) -> None:
        # shutdown() aborts a connect in SYN_SENT at once; close() from here would not.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.thread.join(_ABORT_WINDOW)
        self.sock.close()


def _abort_all(connects: Sequence[_Connect]) -> None:
    """Abort until every connect returned; a connect still queued starts later, so repeat."""
    end = time.monotonic() + _ABORT_WINDOW
    while time.monotonic() < end:
        pending = [c for c in connects if not c.finished.is_set()]
        if not pending:
            return
        for c in pending:
            c.abort()
        time.sleep(0.01)


@dataclass
class Round:
    dead_connects: int
    live_seconds: float | None = None
    waited: bool = False
    released_after_abort: float | None = None
    live_error: str | None = None

    @property
    def confirmed(self) -> bool:
        """The live connect went through right when the dead ones were aborted."""
        return self.released_after_abort is not None and (
            self.released_after_abort < _RELEASE_CONFIRMS
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "dead_connects": self.dead_connects,
            "live_connect_seconds": None
            if self.live_seconds is None
            else round(self.live_seconds, 6),
            "waited": self.waited,
            "released_after_abort_seconds": None
            if self.released_after_abort is None
            else round(self.released_after_abort, 6),
            "live_error": self.live_error,
        }


class Inconclusive(Exception):
    """The targets did not behave as a dead and a live endpoint."""


class Progress:
    """A one-line progress display on stderr, only when stderr is a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.enabled = stream.isatty()

    def show(self, text: str) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[K" + text)
            self.stream.flush()

    def clear(self) -> None:
        self.show("")


@dataclass
class Experiment:
    """One dead and one live target, and how long the live connect may wait (``hold``)."""

    dead: Target
    live: Target
    hold: float
    progress: Progress
    threshold: float = 0.0
    baseline: list[float] = field(default_factory=list)

    def connect(self, target: Target) -> _Connect:
        return _Connect(target[0], target[1], self.hold + _EXTRA_SOCKET_TIMEOUT)

    def measure_baseline(self, count: int = 3) -> None:
        """The live connect alone, so that a slow live target is not taken for a wait."""
        for _ in range(count):
            live = self.connect(self.live)
            finished = live.finished.wait(self.hold)
            live.abort()
            live.close()
            if not finished or live.error is not None:
                why = error_text(live.error) if live.error else f"no answer in {self.hold:g} s"
                raise Inconclusive(f"the live target {format_endpoint(self.live[1])} failed: {why}")
            assert live.elapsed is not None
            self.baseline.append(live.elapsed)
        self.threshold = min(0.8 * self.hold, max(0.25, 3 * max(self.baseline) + 0.05))

    def run_round(self, k: int, of: int) -> Round:
        result = Round(k)
        dead = [self.connect(self.dead) for _ in range(k)]
        live: _Connect | None = None
        try:
            for c in dead:
                c.started.wait(1.0)
            time.sleep(_SETTLE)
            answered = [c for c in dead if c.finished.is_set()]
            if answered:
                what = error_text(answered[0].error) if answered[0].error else "it connected"
                raise Inconclusive(
                    f"the dead target {format_endpoint(self.dead[1])} answered ({what}); "
                    "give one whose SYNs are dropped (a firewalled port, a powered-off host)"
                )
            live = self.connect(self.live)
            while not live.finished.wait(0.1):
                waited = time.monotonic() - live.t0
                if waited >= self.hold:
                    break
                self.progress.show(
                    f"doctor: {k}/{of} dead connect(s) pending, live connect "
                    f"waiting {waited:.1f} s / {self.hold:g} s"
                )
            held = not live.finished.is_set()
            aborted_at = time.monotonic()
            _abort_all(dead)
            if held:
                live.finished.wait(_ABORT_WINDOW)
                if live.finished.is_set():
                    result.released_after_abort = max(0.0, live.t1 - aborted_at)
            result.live_seconds = live.elapsed
            if live.error is not None:
                result.live_error = error_text(live.error)
            result.waited = held or (
                result.live_seconds is not None and result.live_seconds > self.threshold
            )
            if result.live_seconds is None or result.live_error is not None:
                raise Inconclusive(
                    f"the live target {format_endpoint(self.live[1])} did not connect even "
                    f"after the dead connects were aborted ({result.live_error or 'still pending'})"
                )
            return result
        finally:
            self.progress.clear()
            _abort_all(dead if live is None else [*dead, live])
            for c in dead if live is None else [*dead, live]:
                c.close()

    def find_slots(self, max_slots: int, rounds: list[Round]) -> int | None:
        """The smallest number of pending dead connects that makes a live connect wait."""
        for k in range(1, max_slots + 1):
            result = self.run_round(k, max_slots)
            rounds.append(result)
            if result.waited and not result.confirmed:
                # A wait that the abort did not end may be a slow live connect: repeat once.
                result = self.run_round(k, max_slots)
                rounds.append(result)
            if result.waited:
                return k
        return None
