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
import sys
import time
from typing import Any

from .._errors import ConnectDeadlineExceeded, EndpointUnavailable
from .._guard import Guard, Ticket
from .._tcp import abort_connect, connect_left_host
from ._context import admitted_above
from ._patch import Patcher

__all__ = ["install"]

# Raw descriptors: socket.socket.family/.type convert to enums (~0.5 us each).
_family_of = _socket.socket.family.__get__
_type_of = _socket.socket.type.__get__
_INET = frozenset({socket.AF_INET, socket.AF_INET6})
_STREAM = socket.SOCK_STREAM
_TCP = socket.IPPROTO_TCP

# How a deadline is applied to a blocking connect.
_NONE, _KERNEL, _TIMEOUT = object(), object(), object()
# Linux bounds SYN_SENT itself with TCP_USER_TIMEOUT (ms). The check runs on the SYN
# retransmission timer, so below the first retransmission (1 s) it fires late:
# shorter deadlines use a Python socket timeout instead.
_KERNEL_CAP = getattr(socket, "TCP_USER_TIMEOUT", None) if sys.platform == "linux" else None
_KERNEL_CAP_MIN = 1.0

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

    def connect(wrapped: Any, sock: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        ticket = _admission(guard, sock, args)
        if ticket is None:
            return wrapped(*args, **kwargs)
        timeout = sock.gettimeout()
        if timeout == 0.0:
            return _connect_nonblocking(wrapped, ticket, args, kwargs)
        deadline = ticket.deadline
        how = _NONE
        if deadline is not None and (timeout is None or timeout > deadline):
            if timeout is None and deadline >= _KERNEL_CAP_MIN and _KERNEL_CAP is not None:
                # One setsockopt instead of a Python timeout (two ioctls, then poll and
                # SO_ERROR on every connect): the kernel itself gives up on the SYN.
                how = _KERNEL
                sock.setsockopt(_TCP, _KERNEL_CAP, int(deadline * 1000))
            else:
                how = _TIMEOUT
                sock.settimeout(deadline)
        started = monotonic()
        try:
            result = wrapped(*args, **kwargs)
        except TimeoutError as exc:
            if how is _KERNEL:
                ticket.failed(exc)  # the kernel's own SYN timeout: the SYN left
            else:
                left_host = connect_left_host(sock)
                abort_connect(sock)
                ticket.failed(exc, left_host=left_host)
            if how is not _NONE:
                raise ConnectDeadlineExceeded(
                    f"connguard: connect to {ticket.label} exceeded its deadline of "
                    f"{deadline:.3g} s",
                    ticket.label,
                    deadline,
                ) from exc
            raise
        except OSError as exc:
            ticket.failed(exc)
            raise
        except BaseException:
            ticket.abandoned()
            raise
        finally:
            if how is _KERNEL:
                # The cap would also bound unacknowledged data later: lift it.
                _lift_kernel_cap(sock)
            elif how is _TIMEOUT:
                sock.settimeout(timeout)
        ticket.succeeded(monotonic() - started)
        return result

    return connect


def _lift_kernel_cap(sock: Any) -> None:
    try:
        sock.setsockopt(_TCP, _KERNEL_CAP, 0)
    except OSError:
        pass  # the socket is already closed or reset: nothing left to bound


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
