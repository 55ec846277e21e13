"""``socket.socket.connect`` and ``connect_ex``: the floor every other path reaches.

- Open endpoint: ``EndpointUnavailable`` at once (``connect_ex`` returns
  ``ECONNREFUSED``), no SYN sent.
- Blocking socket with no timeout or a longer one than the endpoint's budget:
  the connect gets the budget, then the socket's own timeout is restored; a
  caller's shorter timeout wins. On expiry the SYN is aborted (the socket is
  usable again) and ``ConnectDeadlineExceeded`` (a ``TimeoutError``) is raised.
- Non-blocking socket: fail fast only; ``BlockingIOError`` passes untouched and
  is no outcome (asyncio accounts for its connects at ``sock_connect``).
- UDP, AF_UNIX and unguarded endpoints pass through untouched.

With the connect lane (``CONNGUARD_MAX_INFLIGHT_CONNECTS``) or the first-contact
pre-check on, ``install`` picks the lane wrappers (end of this module) instead: same
rules, plus a slot from ``guard.gate`` around each blocking connect (time queued
is neither connect time nor a failure; a preempted connect is retried within its
own deadline) and the pre-check before a never-seen endpoint's first connect.
Without them the plain wrappers run, so the healthy path pays nothing for either.
"""

from __future__ import annotations

import _socket
import errno
import os
import socket
import time
from typing import Any

from .._errors import ConnectDeadlineExceeded, EndpointUnavailable, LaneTimeout
from .._gate import (
    Lane,
    Slot,
    expected_seconds,
    holding,
    outer_ticket,
    reserve_seconds,
)
from .._guard import Guard, Ticket
from .._tcp import abort_connect, connect_left_host
from .._watchdog import WATCHDOG_ABORTS
from ._context import admitted_above
from ._patch import Factory, Live, Patcher

__all__ = ["install"]

# Raw descriptors: socket.socket.family/.type convert to enums (~0.5 us each).
_raw_family = _socket.socket.family.__get__
_raw_type = _socket.socket.type.__get__


def _family_of(sock: Any) -> int:
    try:
        return _raw_family(sock)  # type: ignore[no-any-return]
    except TypeError:  # gevent's socket class wraps a _socket.socket, is not one
        return int(sock.family)


def _type_of(sock: Any) -> int:
    try:
        return _raw_type(sock)  # type: ignore[no-any-return]
    except TypeError:
        return int(sock.type)


_INET = frozenset({int(socket.AF_INET), int(socket.AF_INET6)})
_STREAM = int(socket.SOCK_STREAM)
_TCP = socket.IPPROTO_TCP

# How a deadline is applied to a blocking connect: not at all, by the watchdog
# (Linux: shutdown() aborts the SYN), or by a socket timeout (elsewhere).
_NONE, _WATCHED, _TIMEOUT = object(), object(), object()

# errno returned by connect_ex -> the exception connect() would have raised
_ERRNO_EXCEPTIONS: dict[int, type[OSError]] = {
    errno.ECONNREFUSED: ConnectionRefusedError,
    errno.ETIMEDOUT: TimeoutError,
    errno.EAGAIN: TimeoutError,  # connect_ex's answer when a socket timeout expires
}


def install(guard: Guard) -> Patcher:
    patcher = Patcher()
    wrap_socket_class(patcher, guard, socket.socket)
    return patcher


def wrap_socket_class(patcher: Patcher, guard: Guard, cls: type[Any]) -> None:
    """Guard ``cls.connect``/``connect_ex``: ``socket.socket``, or gevent's replacement.

    gevent's class is not a ``_socket.socket``; its connects wait in the hub, which
    enforces a socket timeout with a timer (no ioctl, no thread), so its deadlines
    take the socket-timeout path and the watchdog never touches its sockets.
    """
    if guard.gate is not None or guard.first_contact is not None:
        patcher.wrap(cls, "connect", _lane_connect_wrapper(guard, ex=False))
        patcher.wrap(cls, "connect_ex", _lane_connect_wrapper(guard, ex=True))
        return
    # The hot path: plain functions, not wrapt (see _patch.py and docs/benchmarks.md).
    native = issubclass(cls, _socket.socket)
    patcher.replace(cls, "connect", _connect_factory(guard, native))
    patcher.replace(cls, "connect_ex", _connect_ex_factory(guard))


def _admission(guard: Guard, sock: Any, args: tuple[Any, ...]) -> Ticket | None:
    """The ticket for this connect, or None to pass it through untouched."""
    if _type_of(sock) != _STREAM or _family_of(sock) not in _INET or admitted_above.get():
        return None
    address = args[0] if args else None
    if type(address) is not tuple or len(address) < 2:
        return None
    return guard.admit(address[0], address[1])


def _connect_factory(guard: Guard, native: bool = True) -> Factory:
    """``native``: a ``_socket.socket`` subclass (raw descriptors, the watchdog may abort)."""
    monotonic = time.monotonic
    type_of, family_of = (_raw_type, _raw_family) if native else (_type_of, _family_of)
    watched = WATCHDOG_ABORTS and native
    admit = guard.admit
    watchdog = guard.watchdog
    watch = watchdog.watch
    unwatch = watchdog.unwatch

    def factory(original: Any, live: Live) -> Any:
        def connect(sock: Any, address: Any, /) -> Any:
            # _admission(), inlined: this is the hottest line of connguard.
            if (
                not live  # uninstalled, yet still called by a patch stacked on ours
                or type_of(sock) != _STREAM
                or family_of(sock) not in _INET
                or admitted_above.get()
                or type(address) is not tuple
                or len(address) < 2
            ):
                return original(sock, address)
            ticket = admit(address[0], address[1])
            if ticket is None:
                return original(sock, address)
            timeout = sock.gettimeout()
            if timeout == 0.0:
                return _connect_nonblocking(original, ticket, (sock, address), {})
            deadline = ticket.deadline
            how = _NONE
            started = monotonic()
            key = id(sock)
            if deadline is not None and (timeout is None or timeout > deadline):
                if watched:
                    how = _WATCHED
                    ticket.sock = sock
                    ticket.expires = started + deadline
                    watch(key, ticket)
                else:
                    how = _TIMEOUT
                    sock.settimeout(deadline)
            try:
                result = original(sock, address)
            except OSError as exc:
                if how is _WATCHED and not unwatch(key):
                    raise _deadline_exceeded(ticket) from exc
                if isinstance(exc, TimeoutError):
                    left_host = connect_left_host(sock)
                    abort_connect(sock)
                    if how is _TIMEOUT:
                        raise _deadline_exceeded(ticket, left_host) from exc
                    ticket.timed_out(exc, timeout, left_host=left_host)
                else:
                    ticket.failed(exc, elapsed=monotonic() - started)
                raise
            except BaseException:
                if how is _WATCHED:
                    unwatch(key)
                ticket.abandoned()
                raise
            finally:
                if how is _TIMEOUT:
                    sock.settimeout(timeout)
            if how is _WATCHED and not unwatch(key):
                # Connected in the instant the watchdog aborted it: the socket is shut down.
                raise _deadline_exceeded(ticket)
            ticket.succeeded(monotonic() - started)
            return result

        return connect

    return factory


def _deadline_exceeded(ticket: Ticket, left_host: bool = True) -> ConnectDeadlineExceeded:
    """Record the expiry as a timeout of the endpoint; build the caller's error."""
    ticket.failed(TimeoutError(errno.ETIMEDOUT, "connect deadline exceeded"), left_host=left_host)
    return ConnectDeadlineExceeded(
        f"connguard: connect to {ticket.label} exceeded its deadline of {ticket.deadline:.3g} s",
        ticket.label,
        ticket.deadline,
    )


def _connect_nonblocking(
    wrapped: Any, ticket: Ticket, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    try:
        result = wrapped(*args, **kwargs)
    except BlockingIOError:
        ticket.abandoned()  # in progress: the outcome is not ours to see
        raise
    except OSError as exc:
        ticket.failed(exc, elapsed=0.0)  # answered at once, as a non-blocking call does
        raise
    except BaseException:
        ticket.abandoned()
        raise
    ticket.abandoned()  # an immediate success carries no useful connect time
    return result


def _connect_ex_factory(guard: Guard) -> Factory:
    monotonic = time.monotonic

    def factory(original: Any, live: Live) -> Any:
        def connect_ex(sock: Any, address: Any, /) -> Any:
            if not live:
                return original(sock, address)
            try:
                ticket = _admission(guard, sock, (address,))
            except EndpointUnavailable:
                return errno.ECONNREFUSED
            if ticket is None:
                return original(sock, address)
            timeout = sock.gettimeout()
            deadline = ticket.deadline
            imposed = (
                timeout != 0.0 and deadline is not None and (timeout is None or timeout > deadline)
            )
            if imposed:
                try:
                    sock.settimeout(deadline)
                except OSError:  # closed socket: let the real call give its own answer
                    ticket.abandoned()
                    return original(sock, address)
            started = monotonic()
            try:
                code = original(sock, address)
            except BaseException:
                ticket.abandoned()
                raise
            finally:
                if imposed:
                    sock.settimeout(timeout)
            if code == 0:
                if timeout == 0.0:
                    ticket.abandoned()
                else:
                    ticket.succeeded(monotonic() - started)
            elif timeout == 0.0 and code in (errno.EINPROGRESS, errno.EWOULDBLOCK):
                ticket.abandoned()
            else:
                if imposed and code == errno.EAGAIN:
                    code = errno.ETIMEDOUT  # what the call answers at the OS's own timeout
                _report_errno(ticket, sock, code, timeout, monotonic() - started)
            return code

        return connect_ex

    return factory


def _report_errno(
    ticket: Ticket, sock: Any, code: int, timeout: float | None, elapsed: float
) -> None:
    exc_type = _ERRNO_EXCEPTIONS.get(code, OSError) if timeout != 0.0 else OSError
    exc = exc_type(code, os.strerror(code))
    if exc_type is TimeoutError:
        left_host = connect_left_host(sock)
        abort_connect(sock)
        ticket.timed_out(exc, timeout, left_host=left_host)
    else:
        ticket.failed(exc, elapsed=elapsed)


# -- the connect lane and the first-contact pre-check ----------------------------------
# Only installed when one of them is on. Deadlines here use a socket timeout, not
# the watchdog: the lane path is not the hot path, and each attempt after a wait or
# a preemption gets only what is left of the connect's own budget.

_MAX_ATTEMPTS = 16  # preemptions one connect survives before it gives up


def _lane_connect_wrapper(guard: Guard, *, ex: bool) -> Any:
    gate = guard.gate
    first_contact = guard.first_contact

    def connect(wrapped: Any, sock: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if _type_of(sock) != _STREAM or _family_of(sock) not in _INET:
            return wrapped(*args, **kwargs)
        address = args[0] if args else None
        if type(address) is not tuple or len(address) < 2:
            return wrapped(*args, **kwargs)
        if admitted_above.get():
            # An outer integration owns the ticket; the slot is still taken here,
            # where the socket is (unless the caller already holds one: the prober).
            outer = outer_ticket.get()
            if gate is None or outer is None or holding.get() or sock.gettimeout() == 0.0:
                return wrapped(*args, **kwargs)
            return _as_code(ex, _outer_in_lane, gate, outer, wrapped, sock, args, kwargs)
        try:
            ticket = guard.admit(address[0], address[1])
            if ticket is not None and first_contact is not None:
                first_contact(ticket)
        except EndpointUnavailable:
            if ex:
                return errno.ECONNREFUSED
            raise
        if ticket is None:
            return wrapped(*args, **kwargs)
        timeout = sock.gettimeout()
        if timeout == 0.0:
            if ex:
                return _nonblocking_code(wrapped, ticket, args, kwargs)
            return _connect_nonblocking(wrapped, ticket, args, kwargs)
        return _as_code(ex, _own_in_lane, gate, ticket, wrapped, sock, args, kwargs)

    return connect


def _as_code(ex: bool, run: Any, *args: Any) -> Any:
    """connect_ex answers with an errno where connect raises."""
    if not ex:
        return run(*args, ex=False)
    try:
        return run(*args, ex=True)
    except OSError as exc:
        return exc.errno if exc.errno is not None else errno.EIO


def _nonblocking_code(
    wrapped: Any, ticket: Ticket, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> int:
    try:
        code: int = wrapped(*args, **kwargs)
    except BaseException:
        ticket.abandoned()
        raise
    if code in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
        ticket.abandoned()
    else:
        ticket.failed(OSError(code, os.strerror(code)), elapsed=0.0)
    return code


def _attempt(wrapped: Any, args: tuple[Any, ...], kwargs: dict[str, Any], ex: bool) -> Any:
    """One real connect; connect_ex's error codes become the exceptions connect raises."""
    if not ex:
        return wrapped(*args, **kwargs)
    code = wrapped(*args, **kwargs)
    if code:
        raise _ERRNO_EXCEPTIONS.get(code, OSError)(code, os.strerror(code))
    return 0


def _own_in_lane(
    gate: Lane | None,
    ticket: Ticket,
    wrapped: Any,
    sock: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    ex: bool,
) -> Any:
    """A blocking connect this wrapper admitted: lane slot, deadline, one outcome."""
    timeout = sock.gettimeout()
    deadline = ticket.deadline
    imposed = deadline is not None and (timeout is None or timeout > deadline)
    budget = deadline if imposed else timeout
    started = time.monotonic()
    try:
        result, elapsed = _in_lane(gate, ticket, budget, wrapped, sock, args, kwargs, ex)
    except LaneTimeout:
        ticket.abandoned()
        raise
    except TimeoutError as exc:
        left_host = connect_left_host(sock)
        abort_connect(sock)
        if imposed:
            raise _deadline_exceeded(ticket, left_host) from exc
        ticket.timed_out(exc, timeout, left_host=left_host)
        raise
    except OSError as exc:
        # Queue time included: failing fast would have spared the caller that too.
        ticket.failed(exc, elapsed=time.monotonic() - started)
        raise
    except BaseException:
        ticket.abandoned()
        raise
    finally:
        sock.settimeout(timeout)
    ticket.succeeded(elapsed)
    return result


def _outer_in_lane(
    gate: Lane,
    outer: Any,
    wrapped: Any,
    sock: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    ex: bool,
) -> Any:
    """A connect an outer integration admitted: only the slot; it reports the outcome."""
    timeout = sock.gettimeout()
    budget = timeout if outer.deadline is None else min(timeout or outer.deadline, outer.deadline)
    try:
        return _in_lane(gate, outer, budget, wrapped, sock, args, kwargs, ex, True)[0]
    finally:
        sock.settimeout(timeout)


def _in_lane(
    gate: Lane | None,
    ticket: Any,
    budget: float | None,
    wrapped: Any,
    sock: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    ex: bool,
    outer: bool = False,
) -> tuple[Any, float]:
    """Connect within ``budget`` seconds in all, queue included; (result, connect time).

    Raises ``LaneTimeout`` when no slot comes in time or a preempted connect has no
    time left to retry; the connect's own errors otherwise.
    """
    monotonic = time.monotonic
    start = monotonic()
    end = None if budget is None else start + budget
    if gate is None:
        if budget is not None:
            sock.settimeout(budget)
        return _attempt(wrapped, args, kwargs, ex), monotonic() - start
    health = ticket.health
    guard = getattr(ticket, "guard", None)
    watchdog = guard.watchdog if health.background and guard is not None else None
    expected = expected_seconds(health, budget or 0.0)
    reserve = reserve_seconds(health, budget or 0.0) if budget is not None else 0.0

    def abort() -> None:
        abort_connect(sock)

    preempted_by: BaseException | None = None
    for _ in range(_MAX_ATTEMPTS):
        asked = monotonic()
        slot: Slot = gate.acquire(
            ticket.label,
            background=health.background,
            timeout=None if end is None else end - asked,
            expected=expected,
            reserve=reserve,
            abort=abort,
        )
        try:
            began = monotonic()
            if outer:  # the outer integration times the whole call: tell it the queue
                ticket.queued += began - asked
            if slot.preempted:
                continue  # preempted before the connect even started
            if end is not None:
                sock.settimeout(max(end - began, 1e-6))
            # A preemption landing just before our SYN leaves finds nothing to abort:
            # the watchdog makes it stick by aborting the SYN once it is out.
            yield_key = None
            if watchdog is not None:
                yield_key = watchdog.yield_to_held(sock, lambda s=slot: s.preempted)
            try:
                return _attempt(wrapped, args, kwargs, ex), monotonic() - began
            except OSError as exc:
                if not slot.preempted:
                    raise
                preempted_by = exc  # a foreground connect took our slot: queue again
            finally:
                if watchdog is not None and yield_key is not None:
                    watchdog.stop_yielding(yield_key)
        finally:
            gate.release(slot)
        if end is not None and end - monotonic() <= reserve:
            break
    raise LaneTimeout(
        f"connguard: connect to {ticket.label} was preempted by foreground connects and "
        f"its deadline of {budget or 0.0:.3g} s left no time to retry; this is not a "
        "failure of the endpoint",
        ticket.label,
        budget,
    ) from preempted_by
