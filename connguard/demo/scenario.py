"""The field incident as a runnable scenario: for ``connguard demo``, benchmarks and tests.

One process on an emulated one-slot host (``connguard.testing.serialized_host``),
an in-process monitoring *agent* that reconnects every second to a dead
*collector*, and *logins* at a steady rate that each open a new connection.
The pieces here know nothing about ldap3 or httpx: a login is any callable.

Every loop is bounded in count and time; every thread started here is joined.
"""

from __future__ import annotations

import contextlib
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import KW_ONLY, asdict, dataclass, field
from typing import Any

from .._config import Precheck
from .._probe import run_datagram_check

__all__ = [
    "STALL_SECONDS",
    "Agent",
    "Attempt",
    "Load",
    "Sample",
    "attempts_as_json",
    "background_thread",
    "percentile",
    "samples_as_json",
    "stall_episodes",
    "summarize_logins",
]

#: A login slower than this is "stalled" (users notice 100 ms).
STALL_SECONDS = 0.1

_MAX_THREADS = 512  # a runaway stall cannot create unbounded threads
_JOIN_SECONDS = 60.0


@dataclass(slots=True)
class Sample:
    """One timed call: when it was due (seconds since the row started), how long, outcome."""

    at: float
    latency: float
    ok: bool
    error: str | None = None


@dataclass(slots=True)
class Attempt:
    """One agent reconnect: ``outcome`` is ``skipped`` (UDP check), ``fast``, ``timeout``…"""

    start: float
    end: float
    outcome: str


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(eq=False)  # a running agent is equal only to itself
class Agent:
    """An APM-style agent: reconnects to its collector every ``interval`` seconds.

    Each attempt is a plain blocking connect with a ``dead_connect`` socket
    timeout (Windows' 21 s, scaled down for short runs). With ``udp_check`` it
    first asks the collector's UDP echo port and skips the TCP connect when
    nothing answers: the fix the field's vendor shipped.
    """

    collector: tuple[str, int]
    _: KW_ONLY
    dead_connect: float
    interval: float = 1.0
    udp_check: tuple[str, int] | None = None
    udp_timeout: float = 0.5
    clock: Callable[[], float] = time.monotonic
    attempts: list[Attempt] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.origin = self.clock()
        self._stop = threading.Event()
        self._no_more = threading.Event()
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, name="apm-agent", daemon=True)

    def start(self, origin: float) -> None:
        self.origin = origin
        self._thread.start()

    def _run(self) -> None:
        # Bounded: at most one attempt per interval until stopped.
        while not self._no_more.is_set():
            start = self.clock()
            if self.udp_check is not None and not self._echo_answers(self.udp_check):
                self._record(start, "skipped")
            else:
                self._record(start, self._connect_once())
            if self._no_more.wait(self.interval):
                break

    def _echo_answers(self, address: tuple[str, int]) -> bool:
        """The field's own fix: does the collector answer a UDP echo? No SYN is sent."""
        host, port = address
        return run_datagram_check(Precheck("udp-echo", port), host, port, self.udp_timeout)

    def _connect_once(self) -> str:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with self._lock:
            self._sock = sock
        try:
            sock.settimeout(self.dead_connect)
            sock.connect(self.collector)
            return "connected"
        except OSError as exc:
            # connguard's fast failure (no SYN sent; of the kind the endpoint last
            # gave) vs a real refusal or timeout. The agent knows no connguard.
            if any(c.__name__ == "EndpointUnavailable" for c in type(exc).__mro__):
                return "fast"
            if isinstance(exc, ConnectionRefusedError):
                return "refused"
            if isinstance(exc, TimeoutError):
                return "timeout"
            return "aborted" if self._stop.is_set() else type(exc).__name__
        finally:
            with self._lock:
                self._sock = None
            sock.close()

    def _record(self, start: float, outcome: str) -> None:
        self.attempts.append(Attempt(start - self.origin, self.clock() - self.origin, outcome))

    def stop(self, *, abort: bool) -> None:
        """No new attempts; ``abort`` also cuts the one in flight short (else it runs out)."""
        self._no_more.set()
        if abort:
            self._stop.set()
            with self._lock:
                sock = self._sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # aborts SYN_SENT at once on Linux
        self._thread.join(_JOIN_SECONDS)


@dataclass
class Load:
    """Calls ``fn`` at a steady ``rate`` for ``duration`` seconds, each call in its own thread.

    A stalled call never stops the clock: the next one starts on time. Latency
    is measured from the moment a call was due, so scheduling delays count too.
    """

    fn: Callable[[], None]
    rate: float
    duration: float
    start_delay: float = 0.05
    samples: list[Sample] = field(default_factory=list)
    dropped: int = 0

    def __post_init__(self) -> None:
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def _call(self, due: float, origin: float) -> None:
        error: str | None = None
        try:
            self.fn()
        except Exception as exc:  # a failed login is a result, not a crash
            error = f"{type(exc).__name__}: {exc}"[:200]
        latency = time.monotonic() - due
        with self._lock:
            self.samples.append(Sample(round(due - origin, 6), latency, error is None, error))

    def run(self, origin: float, stop: threading.Event | None = None) -> None:
        """Start every call on schedule (blocking until the last one started)."""
        count = int(self.duration * self.rate)
        for index in range(count):
            due = origin + self.start_delay + index / self.rate
            delay = due - time.monotonic()
            if stop is not None and stop.wait(max(0.0, delay)):
                break
            if stop is None and delay > 0:
                time.sleep(delay)
            self._threads = [t for t in self._threads if t.is_alive()]
            if len(self._threads) >= _MAX_THREADS:
                self.dropped += 1
                continue
            thread = threading.Thread(target=self._call, args=(due, origin), daemon=True)
            self._threads.append(thread)
            thread.start()

    def in_flight(self) -> int:
        return sum(t.is_alive() for t in self._threads)

    def join(self, timeout: float = _JOIN_SECONDS) -> None:
        end = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, end - time.monotonic()))

    def snapshot(self) -> list[Sample]:
        with self._lock:
            return sorted(self.samples, key=lambda s: s.at)


@contextlib.contextmanager
def background_thread(target: Callable[[], None], name: str) -> Iterator[threading.Thread]:
    """Run ``target`` in a daemon thread for the block; join it afterwards."""
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        thread.join(_JOIN_SECONDS)


def stall_episodes(samples: Sequence[Sample], gap: float = 1.0) -> list[tuple[float, float]]:
    """Group stalled calls into episodes: ``(first due time, worst latency)`` each.

    Calls whose stall intervals ``[at, at + latency]`` overlap or lie within
    ``gap`` seconds of each other belong to one episode.
    """
    stalled = sorted((s for s in samples if s.latency > STALL_SECONDS), key=lambda s: s.at)
    episodes: list[tuple[float, float]] = []
    end = -math.inf
    for sample in stalled:
        if sample.at > end + gap or not episodes:
            episodes.append((sample.at, sample.latency))
        else:
            first, worst = episodes[-1]
            episodes[-1] = (first, max(worst, sample.latency))
        end = max(end, sample.at + sample.latency)
    return episodes


def summarize_logins(samples: Sequence[Sample]) -> dict[str, Any]:
    """p50/p99/max latency, stalled and failed counts (milliseconds, rounded)."""
    latencies = [s.latency for s in samples]
    return {
        "count": len(samples),
        "p50_ms": round(percentile(latencies, 50) * 1000, 2) if samples else None,
        "p99_ms": round(percentile(latencies, 99) * 1000, 2) if samples else None,
        "max_ms": round(max(latencies) * 1000, 2) if samples else None,
        "stalled": sum(s.latency > STALL_SECONDS for s in samples),
        "failed": sum(not s.ok for s in samples),
        "episodes": [
            {"at": round(at, 3), "worst_ms": round(worst * 1000, 1)}
            for at, worst in stall_episodes(samples)
        ],
    }


def samples_as_json(samples: Sequence[Sample]) -> list[dict[str, Any]]:
    """Samples in due order, as JSON-ready dicts."""
    return [
        {**asdict(s), "latency": round(s.latency, 6)} for s in sorted(samples, key=lambda s: s.at)
    ]


def attempts_as_json(attempts: Sequence[Attempt]) -> list[dict[str, Any]]:
    """Agent attempts as JSON-ready dicts (times rounded to ms)."""
    return [
        {"start": round(a.start, 3), "end": round(a.end, 3), "outcome": a.outcome} for a in attempts
    ]
