"""asyncio: ``loop.sock_connect`` (selector and proactor loops) and uvloop's ``create_connection``.

``loop.create_connection``/``asyncio.open_connection`` call ``sock_connect`` once
per resolved address and move on to the next address on any ``OSError``, so
guarding ``sock_connect`` gives per-address fail fast: a known-dead first
address is skipped at once.

- Open endpoint: ``EndpointUnavailable`` at once, no SYN sent.
- A ticket with a deadline: the connect runs under ``asyncio.timeout`` (or
  ``wait_for`` before 3.11); on expiry the SYN is aborted (``shutdown``) and
  ``ConnectDeadlineExceeded`` (a ``TimeoutError``) is raised. A caller's own
  shorter timeout or cancellation wins and is reported as no outcome.
- The inner call runs with ``admitted_above`` set, so the socket-level wrapper
  (the loop calls ``sock.connect`` on a non-blocking socket) steps aside: a
  second admission of the same key would refuse a recovery trial.

uvloop connects in C and never calls ``sock_connect``: when uvloop is imported
(before or after ``install()``) its ``Loop.create_connection`` is guarded by
``(host, port)`` as given; anyio (httpx) passes resolved addresses there, so
that path stays per address too. uvloop's own ``Loop.sock_connect`` is guarded
like the selector loop's. Around uvloop's ``create_connection`` the
``admitted_above`` mark is not set: the protocol's ``connection_made`` runs in
the caller's context, and tasks it spawns would inherit the mark and go unguarded.
"""

from __future__ import annotations

import asyncio
import asyncio.selector_events
import functools
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .._errors import ConnectDeadlineExceeded, LaneTimeout
from .._gate import Lane, expected_seconds, reserve_seconds
from .._guard import Guard, Ticket
from .._tcp import abort_connect, connect_left_host
from ._context import admitted_above
from ._hooks import when_imported
from ._patch import Patcher

__all__ = ["install"]

_INET = (socket.AF_INET, socket.AF_INET6)
_HAS_ASYNCIO_TIMEOUT = sys.version_info >= (3, 11)


def install(guard: Guard) -> Patcher:
    patcher = Patcher()
    patcher.wrap(
        asyncio.selector_events.BaseSelectorEventLoop, "sock_connect", _sock_connect_wrapper(guard)
    )
    proactor = _proactor_loop_class()
    if proactor is not None:
        patcher.wrap(proactor, "sock_connect", _sock_connect_wrapper(guard))
    _hook_uvloop(guard, patcher)
    return patcher


def _proactor_loop_class() -> Any:
    """Windows' proactor loop connects with ConnectEx, never through ``sock.connect``."""
    if sys.platform != "win32":
        return None
    try:
        import asyncio.proactor_events as proactor_events
    except ImportError:  # pragma: no cover - present on every CPython for Windows
        return None
    cls = getattr(proactor_events, "BaseProactorEventLoop", None)
    return cls if cls is not None and hasattr(cls, "sock_connect") else None


# -- the lane -------------------------------------------------------------------------
# The connect lane (connguard/_gate.py, CONNGUARD_MAX_INFLIGHT_CONNECTS), shared with
# threads: a slot is awaited (the loop keeps running), the deadline left after the
# queue goes to the connect, and a preempted connect queues again within it.

_MAX_ATTEMPTS = 16  # preemptions one connect survives before it gives up


async def _connect_in_lane(
    gate: Lane, ticket: Ticket, sock: Any, connect: Callable[[], Awaitable[Any]], mark: bool
) -> Any:
    health = ticket.health
    budget = ticket.deadline or health.ceiling
    end = time.monotonic() + budget
    reserve = reserve_seconds(health, budget)
    abort = None if sock is None else functools.partial(abort_connect, sock)
    preempted_by: BaseException | None = None
    for _ in range(_MAX_ATTEMPTS):
        try:
            slot = await gate.acquire_async(
                ticket.label,
                background=health.background,
                timeout=end - time.monotonic(),
                expected=expected_seconds(health, budget),
                reserve=reserve,
                abort=abort,
            )
        except LaneTimeout:
            ticket.abandoned()
            raise
        try:
            if not slot.preempted:
                ticket.deadline = max(end - time.monotonic(), 1e-6)  # queue time is not its
                try:
                    return await _connect_with_deadline(ticket, sock, connect, mark)
                except OSError as exc:
                    if not slot.preempted:
                        raise
                    preempted_by = exc  # reported as no outcome (ECONNRESET is not counted)
        finally:
            gate.release(slot)
        if end - time.monotonic() <= reserve:
            break
    ticket.abandoned()
    raise LaneTimeout(
        f"connguard: connect to {ticket.label} was preempted by foreground connects and its "
        f"deadline of {budget:.3g} s left no time to retry; this is not a failure of the endpoint",
        ticket.label,
        budget,
    ) from preempted_by


# -- sock_connect -----------------------------------------------------------------------


def _target(sock: Any, address: Any) -> tuple[str, int] | None:
    """``(host, port)`` of a guarded TCP connect, or None to pass through."""
    try:
        if sock.type != socket.SOCK_STREAM or sock.family not in _INET:
            return None
    except Exception:
        return None
    if type(address) is not tuple or len(address) < 2:
        return None
    host, port = address[0], address[1]
    if not isinstance(host, str) or not isinstance(port, int):
        return None
    return host, port


def _sock_connect_wrapper(guard: Guard) -> Any:
    async def sock_connect(
        wrapped: Any, loop: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if admitted_above.get():
            return await wrapped(*args, **kwargs)
        sock = args[0] if args else kwargs.get("sock")
        address = args[1] if len(args) > 1 else kwargs.get("address")
        target = _target(sock, address)
        if target is None:
            return await wrapped(*args, **kwargs)
        ticket = guard.admit(*target)  # EndpointUnavailable propagates: the fast failure
        if ticket is None:
            return await wrapped(*args, **kwargs)
        return await guarded_connect(guard, ticket, sock, lambda: wrapped(*args, **kwargs))

    return sock_connect


async def guarded_connect(
    guard: Guard,
    ticket: Ticket,
    sock: Any,
    connect: Callable[[], Awaitable[Any]],
    mark: bool = True,
) -> Any:
    """Run ``connect()`` for ``ticket``: lane, deadline, abort on expiry, one outcome.

    ``sock`` (may be None when the socket is not ours to see, as with uvloop)
    is aborted when the deadline expires and tells whether the SYN left the host.
    ``mark=False`` leaves ``admitted_above`` unset: for a call that never reaches a
    Python-level connect and schedules the caller's protocol callbacks, into which
    the mark would leak (uvloop's ``create_connection``).
    """
    if guard.gate is not None:
        return await _connect_in_lane(guard.gate, ticket, sock, connect, mark)
    return await _connect_with_deadline(ticket, sock, connect, mark)


async def _connect_with_deadline(
    ticket: Ticket, sock: Any, connect: Callable[[], Awaitable[Any]], mark: bool = True
) -> Any:
    deadline = ticket.deadline
    token = admitted_above.set(True) if mark else None
    started = time.monotonic()
    expired = False
    try:
        if deadline is None:
            result = await connect()
        elif _HAS_ASYNCIO_TIMEOUT:
            scope = asyncio.timeout(deadline)
            try:
                async with scope:
                    result = await connect()
            except TimeoutError:
                expired = scope.expired()
                raise
        else:  # pragma: no cover - Python 3.10
            try:
                result = await asyncio.wait_for(connect(), deadline)
            except asyncio.TimeoutError:
                expired = True
                raise
    except TimeoutError as exc:
        left_host = True if sock is None else connect_left_host(sock)
        if sock is not None:
            abort_connect(sock)
        ticket.failed(exc, left_host=left_host)
        if expired:
            raise ConnectDeadlineExceeded(
                f"connguard: connect to {ticket.label} exceeded its deadline of {deadline:.3g} s",
                ticket.label,
                deadline,
            ) from exc
        raise
    except OSError as exc:
        ticket.failed(exc, elapsed=time.monotonic() - started)
        raise
    except BaseException:
        # Cancelled (happy eyeballs lost the race, the caller's own timeout): no
        # evidence about the endpoint. Stop the SYN so it holds no half-open slot.
        if sock is not None:
            abort_connect(sock)
        ticket.abandoned()
        raise
    finally:
        if token is not None:
            admitted_above.reset(token)
    ticket.succeeded(time.monotonic() - started)
    return result


# -- uvloop ------------------------------------------------------------------------------


def _hook_uvloop(guard: Guard, patcher: Patcher) -> None:
    """Guard ``uvloop.Loop`` now or when uvloop gets imported.

    uvloop implements ``sock_connect`` itself (not ``BaseSelectorEventLoop``'s), so
    it is wrapped on ``uvloop.Loop`` too.
    """
    wrapper = _create_connection_wrapper(guard)
    sock_connect = _sock_connect_wrapper(guard)

    def patch(uvloop: Any) -> None:
        patcher.wrap(uvloop.Loop, "create_connection", wrapper)
        patcher.wrap(uvloop.Loop, "sock_connect", sock_connect)

    when_imported(guard, "uvloop", patch)


def _create_connection_wrapper(guard: Guard) -> Any:
    async def create_connection(
        wrapped: Any, loop: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        host = args[1] if len(args) > 1 else kwargs.get("host")
        port = args[2] if len(args) > 2 else kwargs.get("port")
        if (
            admitted_above.get()
            or kwargs.get("sock") is not None
            or not isinstance(host, str)
            or not isinstance(port, int)
        ):
            return await wrapped(*args, **kwargs)
        ticket = guard.admit(host, port)
        if ticket is None:
            return await wrapped(*args, **kwargs)
        if kwargs.get("ssl"):
            # The call includes the TLS handshake: a deadline would cut slow
            # handshakes and count them as dead endpoints. Fail fast only.
            ticket = _without_deadline(ticket)
        # No mark: uvloop connects in C (no socket wrapper to step aside), and the
        # mark would leak into tasks the protocol's connection_made spawns.
        return await guarded_connect(
            guard, ticket, None, lambda: wrapped(*args, **kwargs), mark=False
        )

    return create_connection


def _without_deadline(ticket: Ticket) -> Ticket:
    ticket.deadline = None
    return ticket
