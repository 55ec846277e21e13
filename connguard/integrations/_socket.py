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
"""

from __future__ import annotations

import _socket
import errno
import os
import socket
import time
from typing import Any

from .._errors import ConnectDeadlineExceeded, EndpointUnavailable
from .._guard import Guard, Ticket
from .._tcp import abort_connect, connect_left_host
from .._watchdog import WATCHDOG_ABORTS
from ._context import admitted_above
from ._patch import Patcher

__all__ = ["install"]

# Raw descriptors: socket.socket.family/.type convert to enums (~0.5 us each).
_family_of = _socket.socket.family.__get__
_type_of = _socket.socket.type.__get__
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
    patcher.wrap(socket.socket, "connect", _connect_wrapper(guard))
    patcher.wrap(socket.socket, "connect_ex", _connect_ex_wrapper(guard))
    return patcher


def _admission(guard: Guard, sock: Any, args: tuple[Any, ...]) -> Ticket | None:
    """The ticket for this connect, or None to pass it through untouched."""
    if _type_of(sock) != _STREAM or _family_of(sock) not in _INET or admitted_above.get():
        return None
    address = args[0] if args else None
    if type(address) is not tuple or len(address) < 2:
        return None
    return guard.admit(address[0], address[1])


def _connect_wrapper(guard: Guard) -> Any:
    monotonic = time.monotonic
    admit = guard.admit
    watch = guard.watchdog.watch
    unwatch = guard.watchdog.unwatch

    def connect(wrapped: Any, sock: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # _admission(), inlined: this is the hottest line of connguard.
        if _type_of(sock) != _STREAM or _family_of(sock) not in _INET or admitted_above.get():
            return wrapped(*args, **kwargs)
        address = args[0] if args else None
        if type(address) is not tuple or len(address) < 2:
            return wrapped(*args, **kwargs)
        ticket = admit(address[0], address[1])
        if ticket is None:
            return wrapped(*args, **kwargs)
        timeout = sock.gettimeout()
        if timeout == 0.0:
            return _connect_nonblocking(wrapped, ticket, args, kwargs)
        deadline = ticket.deadline
        how = _NONE
        started = monotonic()
        key = id(sock)
        if deadline is not None and (timeout is None or timeout > deadline):
            if WATCHDOG_ABORTS:
                how = _WATCHED
                ticket.sock = sock
                ticket.expires = started + deadline
                watch(key, ticket)
            else:
                how = _TIMEOUT
                sock.settimeout(deadline)
        try:
            result = wrapped(*args, **kwargs)
        except OSError as exc:
            if how is _WATCHED and not unwatch(key):
                raise _deadline_exceeded(ticket) from exc
            if isinstance(exc, TimeoutError):
                left_host = connect_left_host(sock)
                abort_connect(sock)
                if how is _TIMEOUT:
                    raise _deadline_exceeded(ticket, left_host) from exc
                ticket.failed(exc, left_host=left_host)
            else:
                ticket.failed(exc)
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
        ticket.failed(exc)
        raise
    except BaseException:
        ticket.abandoned()
        raise
    ticket.abandoned()  # an immediate success carries no useful connect time
    return result


def _connect_ex_wrapper(guard: Guard) -> Any:
    monotonic = time.monotonic

    def connect_ex(wrapped: Any, sock: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            ticket = _admission(guard, sock, args)
        except EndpointUnavailable:
            return errno.ECONNREFUSED
        if ticket is None:
            return wrapped(*args, **kwargs)
        timeout = sock.gettimeout()
        deadline = ticket.deadline
        imposed = (
            timeout != 0.0 and deadline is not None and (timeout is None or timeout > deadline)
        )
        if imposed:
            sock.settimeout(deadline)
        started = monotonic()
        try:
            code = wrapped(*args, **kwargs)
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
            _report_errno(ticket, sock, code, timeout != 0.0)
        return code

    return connect_ex


def _report_errno(ticket: Ticket, sock: Any, code: int, blocking: bool) -> None:
    exc_type = _ERRNO_EXCEPTIONS.get(code, OSError) if blocking else OSError
    exc = exc_type(code, os.strerror(code))
    if exc_type is TimeoutError:
        left_host = connect_left_host(sock)
        abort_connect(sock)
        ticket.failed(exc, left_host=left_host)
    else:
        ticket.failed(exc)
