"""Pre-checks (tcp, udp-echo, icmp, a callable) and the background recovery prober.

The prober is one daemon thread, started the first time a circuit opens. It
wakes when an open endpoint's wait expires and hands the check to a probe
thread: probes of different endpoints run concurrently, at most
``MAX_CONCURRENT_PROBES`` at once (and no more than the connect lane's slots
when the lane is on), one per endpoint at a time, oldest due first. So a live
endpoint is not kept waiting behind dead ones whose probes each cost a whole
deadline. Each probe either closes the circuit before any caller needs it or
reopens it with the guard's jittered exponential backoff. While it runs,
``guard.callers_may_trial`` is False: no caller ever pays for a recovery check,
and a circuit never stays open just because traffic stopped. A probe connect
(``tcp``) is background priority in the connect lane.

Pre-checks that send no SYN (``udp-echo``, ``icmp``, a callable) can also run
before the first connect to an endpoint never seen before
(``CONNGUARD_PRECHECK_FIRST_CONTACT``): a failure opens the circuit without a
SYN ever leaving the host. That matters on a host that serializes connects,
where even one probe SYN to a dead endpoint blocks everyone else's connects.

The core imports no integration: the prober's own connects are marked as
connguard's by a hook that ``install()`` passes in.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._config import Config, Precheck
from ._errors import ConfigError, EndpointUnavailable, LaneTimeout
from ._gate import holding
from ._tcp import abort_connect, connect_left_host

if TYPE_CHECKING:
    from ._guard import Guard
    from ._health import EndpointHealth

__all__ = [
    "MAX_CONCURRENT_PROBES",
    "PRECHECK_TIMEOUT",
    "FirstContact",
    "Prober",
    "check_supported",
    "icmp_echo",
    "precheck_for",
    "udp_echo",
]

log = logging.getLogger("connguard")

# Budget of a udp-echo/icmp/callable check: an echo answers within one round trip,
# and a silent host costs the prober (or one first contact), not every caller.
PRECHECK_TIMEOUT = 1.0
# A datagram check resends this many times within its timeout (one lost datagram
# must not declare a live host dead).
_DATAGRAM_TRIES = 3
# A probe that could not run (preempted by a foreground connect, lane busy) is
# tried again after this long, without growing the backoff.
_INCONCLUSIVE_RETRY = 1.0
# Probes in flight at once: enough that a round over dozens of blackholed
# endpoints (each probe costs a deadline) takes a few deadlines, not dozens;
# few enough that recovery never floods a host with SYNs.
MAX_CONCURRENT_PROBES = 16
# The scheduler looks over the table at most this often: circuits opening in a
# burst (thousands of refused endpoints) wake it once, not once per opening.
_MIN_RESCAN = 0.05
_ICMP_ECHO_REQUEST, _ICMP_ECHO_REPLY = 8, 0
_ICMP6_ECHO_REQUEST, _ICMP6_ECHO_REPLY = 128, 129
_NO_SYN_KINDS = frozenset({"udp-echo", "icmp", "callable"})


# -- pre-checks ---------------------------------------------------------------------------


def precheck_for(config: Config, health: EndpointHealth) -> Precheck:
    """The endpoint's own pre-check (``CONNGUARD_OVERRIDES precheck=``) or the global one."""
    policy = health.policy
    if policy is not None and policy.precheck is not None:
        own: Precheck = policy.precheck
        return own
    return config.precheck


def _address(host: str, port: int, kind: socket.SocketKind) -> tuple[socket.AddressFamily, Any]:
    family, _, _, _, address = socket.getaddrinfo(host, port, type=kind)[0]
    return family, address


def udp_echo(host: str, port: int, timeout: float) -> bool:
    """True when an echo responder at ``host:port`` (UDP) sends our datagram back in time.

    The datagram is resent up to three times within ``timeout``; an ICMP port
    unreachable (``ECONNREFUSED``) or silence is False.
    """
    family, address = _address(host, port, socket.SOCK_DGRAM)
    token = os.urandom(16)
    end = time.monotonic() + timeout
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        for attempt in range(_DATAGRAM_TRIES):
            try:
                sock.send(token)
            except OSError:
                return False
            until = min(end, time.monotonic() + timeout / _DATAGRAM_TRIES)
            if attempt == _DATAGRAM_TRIES - 1:
                until = end
            while (left := until - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    if sock.recv(64) == token:
                        return True
                except TimeoutError:
                    break
                except OSError:  # ECONNREFUSED: ICMP port unreachable, no responder
                    return False
    return False


def _icmp_socket(family: socket.AddressFamily) -> socket.socket:
    proto = socket.IPPROTO_ICMPV6 if family == socket.AF_INET6 else socket.IPPROTO_ICMP
    return socket.socket(family, socket.SOCK_DGRAM, proto)


def icmp_echo(host: str, timeout: float) -> bool:
    """True when ``host`` answers an ICMP echo (unprivileged datagram ICMP socket)."""
    family, address = _address(host, 0, socket.SOCK_DGRAM)
    v6 = family == socket.AF_INET6
    request, reply = (
        (_ICMP6_ECHO_REQUEST, _ICMP6_ECHO_REPLY) if v6 else (_ICMP_ECHO_REQUEST, _ICMP_ECHO_REPLY)
    )
    payload = os.urandom(16)
    end = time.monotonic() + timeout
    with _icmp_socket(family) as sock:
        sock.connect(address)
        for seq in range(1, _DATAGRAM_TRIES + 1):
            # The kernel fills in the identifier (and the checksum for ICMPv6).
            header = struct.pack("!BBHHH", request, 0, 0, 0, seq)
            packet = header + payload
            if not v6:
                packet = struct.pack("!BBHHH", request, 0, _checksum(packet), 0, seq) + payload
            try:
                sock.send(packet)
            except OSError:
                return False
            until = end if seq == _DATAGRAM_TRIES else min(end, time.monotonic() + timeout / 3)
            while (left := until - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    data = sock.recv(256)
                except TimeoutError:
                    break
                except OSError:
                    return False
                if len(data) >= 8 and data[0] == reply and data[8:] == payload:
                    return True
    return False


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    result: int = ~total & 0xFFFF
    return result


def check_supported(config: Config) -> None:
    """Raise ``ConfigError`` at ``install()`` when a configured pre-check cannot work here."""
    wants_icmp = config.precheck.kind == "icmp" or any(
        o.precheck is not None and o.precheck.kind == "icmp" for o in config.overrides
    )
    if not wants_icmp:
        return
    try:
        _icmp_socket(socket.AF_INET).close()
    except OSError as exc:
        ranges = "unknown"
        with contextlib.suppress(OSError), open("/proc/sys/net/ipv4/ping_group_range") as f:
            ranges = " ".join(f.read().split())
        raise ConfigError(
            f"CONNGUARD_PRECHECK=icmp needs unprivileged ICMP echo sockets, which this host "
            f"refuses ({exc.strerror or exc}; net.ipv4.ping_group_range is {ranges!r}, and "
            f"this process's group {os.getgid()} must be inside it). Widen it with "
            f"`sysctl net.ipv4.ping_group_range='0 2147483647'`, or use "
            f"CONNGUARD_PRECHECK=udp-echo[:PORT], tcp or none"
        ) from None


def run_datagram_check(check: Precheck, host: str, port: int, timeout: float) -> bool:
    """Run a pre-check that sends no SYN; exceptions count as "not reachable"."""
    try:
        if check.kind == "udp-echo":
            return udp_echo(host, check.port or 7, timeout)
        if check.kind == "icmp":
            return icmp_echo(host, timeout)
        if check.kind == "callable" and check.function is not None:
            return bool(check.function(host, port, timeout))
    except OSError:
        return False
    return True


# -- first contact ----------------------------------------------------------------------


class FirstContact:
    """Runs the no-SYN pre-check before the first connect to a never-seen endpoint."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        self._seen: set[tuple[str, int]] = set()
        self._lock = threading.Lock()

    def check(self, ticket: Any) -> None:
        """Return to let the connect go ahead; raise ``EndpointUnavailable`` (circuit opened)."""
        health = ticket.health
        if health.successes or health.failures_total or health.ever_connected:
            return
        check = precheck_for(self.guard.config, health)
        if check.kind not in _NO_SYN_KINDS:
            return
        with self._lock:
            if health.endpoint in self._seen:
                return  # checked already (or being checked by another thread)
            if len(self._seen) >= self.guard.config.max_endpoints:
                self._seen.clear()
            self._seen.add(health.endpoint)
        host, port = health.endpoint
        started = time.monotonic()
        try:
            ok = run_datagram_check(check, host, port, PRECHECK_TIMEOUT)
        except Exception as exc:  # a user's callable that raised
            self.guard.contain("first-contact pre-check", exc)
            return
        if ok:
            return
        reason = (
            f"first-contact pre-check {check} got no answer in {time.monotonic() - started:.3f} s"
        )
        ticket.failed(OSError(errno.EHOSTUNREACH, reason))  # opens: never connected
        raise EndpointUnavailable(
            f"connguard: {health.label} is unavailable ({reason}); no SYN was sent",
            health.label,
            max(0.0, health.retry_at - self.guard.clock()),
        )


# -- the prober -------------------------------------------------------------------------


class Prober:
    """One daemon thread that owns the recovery of open circuits."""

    def __init__(self, guard: Guard, mark_internal: Callable[[], None] | None = None) -> None:
        self.guard = guard
        # Run once in the thread: marks its connects as connguard's own (admitted_above).
        self.mark_internal = mark_internal
        self.probes = 0
        self.recoveries = 0
        self.max_concurrent = 0  # most probes seen in flight at once
        self._probing: set[tuple[str, int]] = set()  # endpoints with a probe in flight
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def notify(self) -> None:
        """A circuit opened: start the thread if needed and let it look again."""
        with self._lock:
            if self._stopped:
                return
            if not self.running:
                self.guard.callers_may_trial = False  # before the thread exists: no gap
                # Made now, not at install: after gevent's patch_all() it must be a
                # gevent Event, or the prober's wait would block the whole hub.
                self._wake = threading.Event()
                self._thread = threading.Thread(
                    target=self._run, name="connguard-prober", daemon=True
                )
                self._thread.start()
        self._wake.set()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            thread, self._thread = self._thread, None
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(2.0)
        self.guard.callers_may_trial = True

    def after_fork(self) -> None:
        """In a child: the thread did not come along; restart it if a circuit is open."""
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = None
        self._probing = set()
        self.guard.callers_may_trial = True
        if not self._stopped and any(h.is_open for h in self.guard.table.snapshot()):
            self.notify()

    # -- the thread --------------------------------------------------------------------

    def _run(self) -> None:
        if self.mark_internal is not None:
            self.mark_internal()
        try:
            while not self._stopped:
                self._wake.clear()
                try:
                    sleep = self._probe_due()
                except Exception as exc:
                    self.guard.contain("prober", exc)
                    sleep = _INCONCLUSIVE_RETRY
                if self._stopped:
                    break
                self._wake.wait(sleep)
                time.sleep(_MIN_RESCAN)  # let a burst of openings coalesce into one scan
        finally:
            with self._lock:
                if self._thread is threading.current_thread():
                    self._thread = None
                    self.guard.callers_may_trial = True  # nobody probes: callers trial again

    def _bound(self) -> int:
        gate = self.guard.gate
        return MAX_CONCURRENT_PROBES if gate is None else min(MAX_CONCURRENT_PROBES, gate.slots)

    def _probe_due(self) -> float | None:
        """Start probes of endpoints whose wait is over; seconds until the next is due.

        Never blocks on a probe: each runs in its own thread, and one finishing
        wakes this loop to start the next.
        """
        guard = self.guard
        next_due: float | None = None
        now = guard.clock()
        due = []
        for health in guard.table.snapshot():
            if not health.is_open or not health.guarded or health.endpoint in self._probing:
                continue
            if health.retry_at > now:
                wait = health.retry_at - now
                next_due = wait if next_due is None else min(next_due, wait)
            else:
                due.append(health)
        due.sort(key=lambda h: h.retry_at)  # waited longest first
        for health in due:
            if self._stopped or len(self._probing) >= self._bound():
                break  # the next probe to finish wakes us
            self._start_probe(health)
        return next_due

    def _start_probe(self, health: EndpointHealth) -> None:
        self._probing.add(health.endpoint)
        self.max_concurrent = max(self.max_concurrent, len(self._probing))
        worker = threading.Thread(
            target=self._probe_in_thread, args=(health,), name="connguard-probe", daemon=True
        )
        try:
            worker.start()
        except Exception:
            self._probing.discard(health.endpoint)
            raise

    def _probe_in_thread(self, health: EndpointHealth) -> None:
        try:
            if self.mark_internal is not None:
                self.mark_internal()
            self._probe(health)
        except Exception as exc:
            self.guard.contain("probe", exc)
        finally:
            self._probing.discard(health.endpoint)
            self._wake.set()

    def _probe(self, health: EndpointHealth) -> None:
        guard = self.guard
        check = precheck_for(guard.config, health)
        host, port = health.endpoint
        now = guard.clock()
        timeout = health.ceiling if check.kind == "tcp" else PRECHECK_TIMEOUT
        with guard.table.lock:
            if not health.is_open:
                return
            health.trial_until = now + timeout + 1.0  # status() shows "half-open"
        self.probes += 1
        started = time.monotonic()
        outcome: bool | None
        connect_time: float | None = None
        answered: BaseException | None = None
        if check.kind == "none":
            outcome = True  # no check: trust the wait, one failure reopens (see _close)
        elif check.kind == "tcp":
            result = self._tcp_probe(health, timeout)
            connect_time = time.monotonic() - started
            if isinstance(result, BaseException):
                answered, result = result, False
            outcome = result
        else:
            try:
                outcome = run_datagram_check(check, host, port, timeout)
            except Exception as exc:
                guard.contain("pre-check", exc)
                outcome = False
        elapsed = time.monotonic() - started
        if answered is not None and guard.answered_at_once(health, answered, elapsed):
            return  # refused at once: failing fast would save nothing, the circuit closed
        if outcome is None:
            self._retry_soon(health)
        elif outcome:
            self._close(health, check, elapsed, connect_time)
        else:
            self._reopen(health, f"probe ({check}): no answer in {elapsed:.3f} s")

    def _tcp_probe(self, health: EndpointHealth, timeout: float) -> bool | OSError | None:
        """A short probe connect, background in the lane; None when it could not run.

        True: connected. False: timed out (or no address). The error itself when the
        endpoint answered (refused, unreachable).
        """
        guard = self.guard
        host, port = health.endpoint
        try:
            family, address = _address(host, port, socket.SOCK_STREAM)
        except OSError:
            return False
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            gate = guard.gate
            slot = None
            if gate is not None:
                try:
                    slot = gate.acquire(
                        f"probe {health.label}",
                        background=True,
                        timeout=timeout,
                        expected=timeout,
                        abort=lambda: abort_connect(sock),
                    )
                except LaneTimeout:
                    return None
            token = holding.set(True)
            # The watchdog makes the probe give way to a caller's connect held on a
            # serializing host, and makes a lane preemption stick (see yield_to_held).
            yield_key = guard.watchdog.yield_to_held(
                sock, None if slot is None else (lambda: slot.preempted)
            )
            try:
                sock.settimeout(timeout)
                sock.connect(address)
                return True
            except TimeoutError:
                left = connect_left_host(sock)
                abort_connect(sock)
                return False if left else None
            except OSError as exc:
                if slot is not None and slot.preempted:
                    return None
                if not guard.watchdog.stop_yielding(yield_key):
                    return None  # gave way to a caller: no evidence either way
                return exc  # refused or unreachable: _probe weighs its cost
            finally:
                holding.reset(token)
                guard.watchdog.stop_yielding(yield_key)
                if slot is not None and gate is not None:
                    gate.release(slot)

    def _retry_soon(self, health: EndpointHealth) -> None:
        with self.guard.table.lock:
            health.trial_until = 0.0
            if health.is_open:
                health.retry_at = self.guard.clock() + _INCONCLUSIVE_RETRY

    def _close(
        self, health: EndpointHealth, check: Precheck, elapsed: float, connect_time: float | None
    ) -> None:
        guard = self.guard
        with guard.table.lock:
            health.trial_until = 0.0
            if not health.is_open:
                return
            health.is_open = False
            health.openings = 0
            # A check that is not a connect proves less: one failure reopens at once.
            health.failures = 0 if connect_time is not None else guard.config.failure_threshold - 1
            if connect_time is not None:
                health.observe_connect_time(connect_time)
                health.ever_connected = True
        self.recoveries += 1
        log.warning(
            "%s: closed by the background prober (%s answered in %.3f s)",
            health.label,
            check,
            elapsed,
        )

    def _reopen(self, health: EndpointHealth, reason: str) -> None:
        guard = self.guard
        with guard.table.lock:
            health.trial_until = 0.0
            if not health.is_open:
                return
            wait = guard._backoff(health.openings)
            health.openings += 1
            health.retry_at = guard.clock() + wait
            health.last_error = reason
        log.info("%s: still unavailable (%s); next probe in %.1f s", health.label, reason, wait)

    def status(self) -> dict[str, Any]:
        return {"running": self.running, "probes": self.probes, "recoveries": self.recoveries}


# -- why a no-SYN check failed, for `connguard check` -------------------------------------


def echo_failure(check: Precheck, host: str, timeout: float) -> OSError | None:
    """Run a ``udp-echo`` or ``icmp`` check once: None when answered, else why not.

    Silence is a ``TimeoutError``, an ICMP port unreachable a ``ConnectionRefusedError``,
    an ICMP socket this user may not open a ``PermissionError``; the error is returned,
    not raised. Datagrams are resent as in the prober's own checks.
    """
    token = os.urandom(16)
    try:
        if check.kind == "udp-echo":
            family, address = _address(host, check.port or 7, socket.SOCK_DGRAM)
            sock = socket.socket(family, socket.SOCK_DGRAM)
            request, reply = (lambda seq: token), (lambda data: data == token)
        elif check.kind == "icmp":
            family, address = _address(host, 0, socket.SOCK_DGRAM)
            sock = _icmp_socket(family)
            request, reply = _icmp_exchange(family == socket.AF_INET6, token)
        else:
            raise ValueError(f"{check} sends no datagram")
        with sock:
            sock.connect(address)
            return _await_echo(sock, request, reply, timeout)
    except OSError as exc:
        return exc


def _icmp_exchange(
    v6: bool, token: bytes
) -> tuple[Callable[[int], bytes], Callable[[bytes], bool]]:
    kind, answer = (
        (_ICMP6_ECHO_REQUEST, _ICMP6_ECHO_REPLY) if v6 else (_ICMP_ECHO_REQUEST, _ICMP_ECHO_REPLY)
    )

    def request(seq: int) -> bytes:
        # The kernel fills in the identifier (and the checksum for ICMPv6).
        checksum = 0 if v6 else _checksum(struct.pack("!BBHHH", kind, 0, 0, 0, seq) + token)
        return struct.pack("!BBHHH", kind, 0, checksum, 0, seq) + token

    return request, lambda data: len(data) >= 8 and data[0] == answer and data[8:] == token


def _await_echo(
    sock: socket.socket,
    request: Callable[[int], bytes],
    reply: Callable[[bytes], bool],
    timeout: float,
) -> OSError | None:
    """Send up to three requests, each waiting its share of ``timeout``; OSErrors propagate."""
    end = time.monotonic() + timeout
    for seq in range(1, _DATAGRAM_TRIES + 1):
        sock.send(request(seq))
        share = end if seq == _DATAGRAM_TRIES else time.monotonic() + timeout / _DATAGRAM_TRIES
        with contextlib.suppress(TimeoutError):
            while time.monotonic() < min(share, end):
                sock.settimeout(max(0.001, min(share, end) - time.monotonic()))
                if reply(sock.recv(2048)):
                    return None
    return TimeoutError(errno.ETIMEDOUT, f"no echo in {timeout:g} s")
