"""httpx (sync and async): httpcore's network backends, once per new TCP connection.

The hook is ``connect_tcp`` of ``httpcore._backends.sync.SyncBackend``,
``httpcore._backends.anyio.AnyIOBackend`` and ``httpcore._backends.trio.TrioBackend``:
below the connection pool (keep-alive requests never reach it) and above TLS
(a certificate or handshake failure never passes through it, so it is never
counted against an endpoint). Modules imported after ``install()`` are patched
by post-import hooks; clients built before ``install()`` are covered because the
methods are patched on the classes.

- Open endpoint: ``httpcore.ConnectError`` (httpx maps it to ``httpx.ConnectError``)
  raised at once, ``from`` the ``EndpointUnavailable``; no DNS lookup, no SYN.
- A connect timeout that is missing or longer than the endpoint's deadline is
  replaced by the deadline; its expiry raises ``httpcore.ConnectTimeout`` (httpx:
  ``httpx.ConnectTimeout``) ``from`` a ``ConnectDeadlineExceeded``.
- With a proxy, httpcore connects to the proxy: the proxy's endpoint is guarded.

How the host-level admission and the per-address one interact
---------------------------------------------------------------
This layer admits ``(host, port)`` as the URL names it. Below it, the socket
integration (sync: ``socket.create_connection`` → ``sock.connect``) and the asyncio
one (anyio → ``loop.create_connection`` → ``sock_connect``) admit each resolved
address. The two must never admit the *same* key for one connect: the second
admission of an open endpoint's recovery trial would be refused by the first.

- Host is an IP literal: both levels would use the same key, and there is only
  one address. This layer owns the ticket and sets ``admitted_above`` so the
  lower levels step aside.
- Host is a name: the keys differ (``("api.example", 443)`` vs
  ``("10.0.0.5", 443)``), so both levels act. The name's circuit gives fail fast
  without DNS and carries the name's policy (patterns, overrides, priority); the
  per-address circuits make ``create_connection`` and anyio skip a dead address at
  once. A connect that failed only because every address was already open
  (``EndpointUnavailable`` below) is no evidence against the name: no outcome.

``GuardedTransport`` (``connguard.httpx``) runs the same logic on its own
network backend and marks the connect so that a patched backend underneath it
does not admit the name a second time.
"""

from __future__ import annotations

import functools
import ipaddress
import ssl
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, TypeVar

from .._errors import ConnectDeadlineExceeded, EndpointUnavailable
from .._guard import Guard, classify_failure
from ._context import admitted_above
from ._hooks import when_imported
from ._patch import Patcher

__all__ = ["connect_async", "connect_sync", "install"]

T = TypeVar("T")

# (module, class) pairs whose connect_tcp opens every new httpx connection.
_BACKENDS: tuple[tuple[str, str, bool], ...] = (
    ("httpcore._backends.sync", "SyncBackend", False),
    ("httpcore._backends.anyio", "AnyIOBackend", True),
    ("httpcore._backends.trio", "TrioBackend", True),
)
# connect_tcp's parameters, in order (the same for every httpcore backend).
_PARAMS = ("host", "port", "timeout", "local_address", "socket_options")

# True while an outer httpx-level guard (GuardedTransport) owns the name's ticket.
_host_admitted: ContextVar[bool] = ContextVar("connguard_httpx_host_admitted", default=False)

# How deep to look for the OSError behind a ConnectError (anyio adds a layer).
_MAX_CAUSE_DEPTH = 8


def install(guard: Guard) -> Patcher:
    patcher = Patcher()
    for module_name, class_name, is_async in _BACKENDS:
        _hook(guard, patcher, module_name, class_name, is_async)
    return patcher


def _hook(
    guard: Guard, patcher: Patcher, module_name: str, class_name: str, is_async: bool
) -> None:
    wrapper = _async_wrapper(guard) if is_async else _sync_wrapper(guard)

    when_imported(
        guard,
        module_name,
        lambda module: patcher.wrap(getattr(module, class_name), "connect_tcp", wrapper),
    )


def _call_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    call = dict(zip(_PARAMS, args, strict=False))
    call.update(kwargs)
    return call


def _sync_wrapper(guard: Guard) -> Any:
    def connect_tcp(wrapped: Any, backend: Any, args: tuple[Any, ...], kwargs: Any) -> Any:
        if _host_admitted.get() or admitted_above.get():
            return wrapped(*args, **kwargs)
        call = _call_arguments(args, kwargs)

        def connect(timeout: float | None) -> Any:
            call["timeout"] = timeout
            return wrapped(**call)

        return connect_sync(guard, connect, call["host"], call["port"], call.get("timeout"))

    return connect_tcp


def _async_wrapper(guard: Guard) -> Any:
    async def connect_tcp(wrapped: Any, backend: Any, args: tuple[Any, ...], kwargs: Any) -> Any:
        if _host_admitted.get() or admitted_above.get():
            return await wrapped(*args, **kwargs)
        call = _call_arguments(args, kwargs)

        def connect(timeout: float | None) -> Awaitable[Any]:
            call["timeout"] = timeout
            return wrapped(**call)  # type: ignore[no-any-return]

        return await connect_async(guard, connect, call["host"], call["port"], call.get("timeout"))

    return connect_tcp


# -- the shared logic (also used by connguard.httpx.GuardedTransport) -------------------


class _Attempt:
    """One guarded connect of a name or address: admission, timeout, outcome."""

    __slots__ = ("imposed", "literal", "started", "ticket", "timeout")

    def __init__(self, guard: Guard, host: str, port: int, timeout: float | None) -> None:
        try:
            ticket = guard.admit(host, port)
        except EndpointUnavailable as exc:
            raise fast_failure(exc) from exc
        self.ticket = ticket
        self.timeout = timeout
        self.imposed = False
        self.literal = False
        if ticket is not None:
            deadline = ticket.deadline
            self.imposed = deadline is not None and (timeout is None or timeout > deadline)
            if self.imposed:
                self.timeout = deadline
            self.literal = _is_ip_literal(host)

    def enter(self) -> tuple[Any, Any]:
        host_token = _host_admitted.set(True)
        # Same key below only for an IP literal: then the lower levels step aside.
        above_token = admitted_above.set(True) if self.literal else None
        self.started = time.monotonic()
        return host_token, above_token

    @staticmethod
    def leave(tokens: tuple[Any, Any]) -> None:
        host_token, above_token = tokens
        if above_token is not None:
            admitted_above.reset(above_token)
        _host_admitted.reset(host_token)

    def succeeded(self) -> None:
        assert self.ticket is not None
        self.ticket.succeeded(time.monotonic() - self.started)

    def failed(self, exc: BaseException) -> BaseException | None:
        """Record ``exc`` (an exception out of the backend); return one to raise instead."""
        ticket = self.ticket
        assert ticket is not None
        import httpcore

        if isinstance(exc, httpcore.ConnectTimeout):
            cause = exc.__cause__ or exc.__context__
            timeout = cause if isinstance(cause, TimeoutError) else TimeoutError(str(exc))
            # Imposed: connguard's own deadline expired. Otherwise the caller's timeout.
            ticket.timed_out(timeout, None if self.imposed else self.timeout)
            if self.imposed:
                deadline = ticket.deadline
                expired = ConnectDeadlineExceeded(
                    f"connguard: connect to {ticket.label} exceeded its deadline of "
                    f"{deadline:.3g} s",
                    ticket.label,
                    deadline,
                )
                expired.__cause__ = exc
                return chained(httpcore.ConnectTimeout, expired)
            return None
        if isinstance(exc, httpcore.ConnectError):
            cause = endpoint_error(exc)
            if cause is None:
                ticket.abandoned()
            else:
                ticket.failed(cause, elapsed=time.monotonic() - self.started)
            return None
        ticket.abandoned()
        return None


def connect_sync(
    guard: Guard, connect: Callable[[float | None], T], host: str, port: int, timeout: float | None
) -> T:
    """``connect(timeout)`` one new connection to ``(host, port)`` under ``guard``."""
    attempt = _Attempt(guard, host, port, timeout)
    if attempt.ticket is None:
        return connect(timeout)
    tokens = attempt.enter()
    try:
        stream = connect(attempt.timeout)
    except BaseException as exc:
        replacement = attempt.failed(exc)
        if replacement is not None:
            raise replacement from replacement.__cause__
        raise
    finally:
        attempt.leave(tokens)
    attempt.succeeded()
    return stream


async def connect_async(
    guard: Guard,
    connect: Callable[[float | None], Awaitable[T]],
    host: str,
    port: int,
    timeout: float | None,
) -> T:
    """``await connect(timeout)`` one new connection to ``(host, port)`` under ``guard``."""
    attempt = _Attempt(guard, host, port, timeout)
    if attempt.ticket is None:
        return await connect(timeout)
    tokens = attempt.enter()
    try:
        stream = await connect(attempt.timeout)
    except BaseException as exc:
        replacement = attempt.failed(exc)
        if replacement is not None:
            raise replacement from replacement.__cause__
        raise
    finally:
        attempt.leave(tokens)
    attempt.succeeded()
    return stream


_CHAINED: dict[type[BaseException], type[BaseException]] = {}


def fast_failure(exc: EndpointUnavailable) -> BaseException:
    """httpcore's error for a fast failure: a timed-out endpoint's is a ConnectTimeout."""
    import httpcore

    base = httpcore.ConnectTimeout if isinstance(exc, TimeoutError) else httpcore.ConnectError
    return chained(base, exc)


def chained(base: type[BaseException], cause: BaseException) -> BaseException:
    """``base(cause)`` whose ``__cause__`` stays ``cause``.

    httpcore's connection pool re-raises every error ``from None``, which would
    erase the link from httpx's error to connguard's. The subclass answers
    ``__cause__`` from a pinned value, so ``httpx.ConnectError.__cause__.__cause__``
    is the ``EndpointUnavailable`` (or ``ConnectDeadlineExceeded``) and tracebacks
    show it. ``args[0]`` is the cause too, as httpcore's own mapping does.
    """
    cls = _CHAINED.get(base)
    if cls is None:
        name = f"Chained{base.__name__}"
        cls = _CHAINED[base] = globals()[name] = type(
            name,
            (base,),
            {
                "__module__": __name__,
                "__qualname__": name,
                "__doc__": f"{base.__name__} from connguard; its __cause__ survives 'from None'.",
                "_pinned": None,
                "__cause__": property(_get_cause, _set_cause),
            },
        )
    exc = cls(cause)
    exc._pinned = cause  # type: ignore[attr-defined]
    return exc


# The C-level slot behind BaseException.__cause__, read and written past our property.
_CAUSE_SLOT: Any = vars(BaseException)["__cause__"]


def _get_cause(exc: BaseException) -> BaseException | None:
    pinned: BaseException | None = getattr(exc, "_pinned", None)
    return pinned if pinned is not None else _CAUSE_SLOT.__get__(exc)


def _set_cause(exc: BaseException, value: BaseException | None) -> None:
    _CAUSE_SLOT.__set__(exc, value)


def endpoint_error(exc: BaseException) -> OSError | None:
    """The connect-phase ``OSError`` behind ``exc`` that speaks against the endpoint.

    httpcore raises ``ConnectError from`` the ``OSError``; anyio adds
    ``OSError("All connection attempts failed") from`` one error or an exception
    group of them. TLS errors and connguard's own fast failures are not evidence.
    """
    pending: list[BaseException] = [exc]
    for _ in range(_MAX_CAUSE_DEPTH * 4):
        if not pending:
            break
        current = pending.pop(0)
        if isinstance(current, ssl.SSLError):
            return None  # a TLS/certificate failure: the endpoint answered
        if current is not exc and classify_failure(current) is not None:
            return current  # type: ignore[return-value]
        grouped = getattr(current, "exceptions", None)
        if isinstance(grouped, tuple | list):
            pending.extend(e for e in grouped if isinstance(e, BaseException))
        nested = current.__cause__ or current.__context__
        if nested is not None:
            pending.append(nested)
    return None


@functools.lru_cache(maxsize=1024)
def _is_ip_literal(host: str) -> bool:
    # Cached: parsing costs ~2 us, and an application talks to few hosts.
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True
