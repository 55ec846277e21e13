"""Explicit httpx transports guarded by connguard, for applications that prefer not to patch.

::

    import httpx
    from connguard.httpx import GuardedTransport, AsyncGuardedTransport

    client = httpx.Client(transport=GuardedTransport(verify=False, http2=True))
    aclient = httpx.AsyncClient(transport=AsyncGuardedTransport(retries=1))

    # or wrap a transport you already build:
    client = httpx.Client(transport=GuardedTransport(httpx.HTTPTransport(proxy=proxy_url)))

Semantics are those of ``connguard.install()``'s httpx integration: each *new*
connection to an open endpoint fails at once with ``httpx.ConnectError`` (its
``__cause__`` chain reaches the ``EndpointUnavailable``), a connect timeout that is
missing or longer than the endpoint's deadline is replaced by the deadline
(``httpx.ConnectTimeout`` on expiry), and only connect-phase failures (timeout,
refused, unreachable; never TLS) count against an endpoint. Keep-alive
requests on open connections are untouched.

Which guard decides
-------------------
- ``config=`` given: a guard private to this transport, built from that
  ``connguard.Config`` (its circuits are not shared and not in ``status()``).
- otherwise, at each connect, the guard of ``connguard.install()`` when it is
  installed (circuits shared with every other integration, visible in
  ``connguard.status()``), else one process-wide *standalone* guard built once
  from the ``CONNGUARD_*`` environment variables (``CONNGUARD_ENABLED=0`` turns it
  off). A bad variable raises ``ConfigError`` when the transport is created.

How the transport sees new connections
--------------------------------------
An ``httpx.HTTPTransport``/``AsyncHTTPTransport`` (built here from the keyword
arguments, or passed in) keeps an httpcore connection pool; the transport wraps
that pool's network backend, which is called exactly once per new TCP
connection (to the proxy, when one is configured). Any other inner transport is
guarded per request instead: an open endpoint still fails at once and the
request's connect timeout is capped, but a success proves reachability only for a
recovery trial (no connect time is learnt from a whole request).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx

from ._api import current_guard
from ._config import Config
from ._errors import EndpointUnavailable
from ._guard import Guard, Ticket
from .integrations._httpx import _host_admitted, connect_async, connect_sync, endpoint_error

__all__ = ["AsyncGuardedTransport", "GuardedTransport"]

T = TypeVar("T")

_standalone_lock = threading.Lock()
_standalone: list[Guard | None] = []  # [] = not built yet; [None] = disabled


def _standalone_guard() -> Guard | None:
    """The process-wide guard used when ``install()`` was not called (built once)."""
    if _standalone:
        return _standalone[0]
    with _standalone_lock:
        if not _standalone:
            config = Config.from_env(os.environ)
            _standalone.append(Guard(config) if config.enabled else None)
        return _standalone[0]


class _GuardSource:
    """Picks the guard for each connect (see the module docstring)."""

    __slots__ = ("_own",)

    def __init__(self, config: Config | None) -> None:
        self._own = None if config is None else (Guard(config) if config.enabled else None)
        if config is None and current_guard() is None:
            _standalone_guard()  # surface a ConfigError now, not inside a request

    def __call__(self, explicit: bool) -> Guard | None:
        if explicit:
            return self._own
        return current_guard() or _standalone_guard()


def _pool_of(transport: Any) -> Any:
    """The httpcore pool whose ``_network_backend`` opens every new connection, or None."""
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    return pool if backend is not None and hasattr(backend, "connect_tcp") else None


# -- network backends ---------------------------------------------------------------------


class _GuardedBackend:
    """A sync httpcore network backend that guards ``connect_tcp`` and delegates the rest."""

    def __init__(self, inner: Any, pick: Callable[[], Guard | None]) -> None:
        self._inner = inner
        self._pick = pick

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> Any:
        def connect(limit: float | None) -> Any:
            return self._inner.connect_tcp(
                host, port, timeout=limit, local_address=local_address,
                socket_options=socket_options,
            )  # fmt: skip

        guard = self._pick()
        if guard is None:
            return connect(timeout)
        return connect_sync(guard, connect, host, port, timeout)

    def __getattr__(self, name: str) -> Any:  # connect_unix_socket, sleep
        return getattr(self._inner, name)


class _AsyncGuardedBackend:
    """An async httpcore network backend that guards ``connect_tcp`` and delegates the rest."""

    def __init__(self, inner: Any, pick: Callable[[], Guard | None]) -> None:
        self._inner = inner
        self._pick = pick

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> Any:
        def connect(limit: float | None) -> Awaitable[Any]:
            return self._inner.connect_tcp(  # type: ignore[no-any-return]
                host, port, timeout=limit, local_address=local_address,
                socket_options=socket_options,
            )  # fmt: skip

        guard = self._pick()
        if guard is None:
            return await connect(timeout)
        return await connect_async(guard, connect, host, port, timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


# -- per request (opaque inner transports) ------------------------------------------------


class _RequestAttempt:
    """Host-level guarding of one request when the connects cannot be seen."""

    __slots__ = ("started", "ticket")

    def __init__(self, guard: Guard, request: httpx.Request) -> None:
        url = request.url
        port = url.port or (443 if url.scheme in ("https", "wss") else 80)
        try:
            self.ticket: Ticket | None = guard.admit(url.host, port)
        except EndpointUnavailable as exc:
            error = httpx.ConnectTimeout if isinstance(exc, TimeoutError) else httpx.ConnectError
            raise error(str(exc), request=request) from exc
        if self.ticket is not None and self.ticket.deadline is not None:
            _cap_connect_timeout(request, self.ticket.deadline)
        self.started = time.monotonic()

    def failed(self, exc: BaseException) -> None:
        ticket = self.ticket
        assert ticket is not None
        if isinstance(exc, httpx.ConnectTimeout):
            ticket.failed(TimeoutError(str(exc)))
        elif isinstance(exc, httpx.ConnectError) and (cause := endpoint_error(exc)) is not None:
            ticket.failed(cause, elapsed=time.monotonic() - self.started)
        else:
            ticket.abandoned()

    def succeeded(self) -> None:
        ticket = self.ticket
        assert ticket is not None
        if ticket.trial:  # the response proves the endpoint reachable again
            ticket.succeeded(time.monotonic() - self.started)
        else:  # a whole request is no connect time
            ticket.abandoned()


def _cap_connect_timeout(request: httpx.Request, deadline: float) -> None:
    timeouts = dict(request.extensions.get("timeout") or {})
    connect = timeouts.get("connect")
    if connect is None or connect > deadline:
        timeouts["connect"] = deadline
        request.extensions = {**request.extensions, "timeout": timeouts}


def _send_guarded(guard: Guard, request: httpx.Request, send: Callable[[], T]) -> T:
    attempt = _RequestAttempt(guard, request)
    if attempt.ticket is None:
        return send()
    token = _host_admitted.set(True)  # a patched backend below must not admit again
    try:
        response = send()
    except BaseException as exc:
        attempt.failed(exc)
        raise
    finally:
        _host_admitted.reset(token)
    attempt.succeeded()
    return response


async def _send_guarded_async(
    guard: Guard, request: httpx.Request, send: Callable[[], Awaitable[T]]
) -> T:
    attempt = _RequestAttempt(guard, request)
    if attempt.ticket is None:
        return await send()
    token = _host_admitted.set(True)
    try:
        response = await send()
    except BaseException as exc:
        attempt.failed(exc)
        raise
    finally:
        _host_admitted.reset(token)
    attempt.succeeded()
    return response


# -- the transports -----------------------------------------------------------------------


def _guard_inner(
    name: str,
    transport: Any,
    default: Callable[..., Any],
    backend: type[Any],
    config: Config | None,
    options: dict[str, Any],
) -> tuple[Any, Callable[[], Guard | None], bool]:
    """The inner transport, how to pick the guard, and whether it is guarded per connection.

    A transport with an httpcore pool is guarded per new connection, by swapping in a
    guarded network backend; any other transport is guarded per request.
    """
    if transport is not None and options:
        raise TypeError(
            f"{name}: pass either an inner transport or {default.__name__} options "
            f"({', '.join(sorted(options))}), not both"
        )
    inner = transport if transport is not None else default(**options)
    source = _GuardSource(config)

    def pick() -> Guard | None:
        return source(config is not None)

    pool = _pool_of(inner)
    if pool is not None and not isinstance(pool._network_backend, backend):
        pool._network_backend = backend(pool._network_backend, pick)
    return inner, pick, pool is not None


class GuardedTransport(httpx.BaseTransport):
    """A sync httpx transport whose new connections go through connguard.

    ``transport``: the inner transport to wrap; by default an
    ``httpx.HTTPTransport`` built from the keyword arguments (``verify``, ``cert``,
    ``trust_env``, ``http1``, ``http2``, ``limits``, ``proxy``, ``uds``,
    ``local_address``, ``retries``, ``socket_options``), which httpx would otherwise
    ignore on the client once ``transport=`` is passed. ``config``: use a guard
    private to this transport instead of the installed or standalone one.
    """

    def __init__(
        self,
        transport: httpx.BaseTransport | None = None,
        *,
        config: Config | None = None,
        **transport_options: Any,
    ) -> None:
        self._transport: httpx.BaseTransport
        self._transport, self._pick, self._per_connection = _guard_inner(
            "GuardedTransport",
            transport,
            httpx.HTTPTransport,
            _GuardedBackend,
            config,
            transport_options,
        )

    @property
    def transport(self) -> httpx.BaseTransport:
        """The wrapped transport."""
        return self._transport

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self._per_connection:
            return self._transport.handle_request(request)
        guard = self._pick()
        if guard is None:
            return self._transport.handle_request(request)
        return _send_guarded(guard, request, lambda: self._transport.handle_request(request))

    def close(self) -> None:
        self._transport.close()


class AsyncGuardedTransport(httpx.AsyncBaseTransport):
    """An async httpx transport whose new connections go through connguard.

    The async twin of :class:`GuardedTransport`; the default inner transport is
    an ``httpx.AsyncHTTPTransport`` built from the keyword arguments.
    """

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        config: Config | None = None,
        **transport_options: Any,
    ) -> None:
        self._transport: httpx.AsyncBaseTransport
        self._transport, self._pick, self._per_connection = _guard_inner(
            "AsyncGuardedTransport",
            transport,
            httpx.AsyncHTTPTransport,
            _AsyncGuardedBackend,
            config,
            transport_options,
        )

    @property
    def transport(self) -> httpx.AsyncBaseTransport:
        """The wrapped transport."""
        return self._transport

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._per_connection:
            return await self._transport.handle_async_request(request)
        guard = self._pick()
        if guard is None:
            return await self._transport.handle_async_request(request)
        return await _send_guarded_async(
            guard, request, lambda: self._transport.handle_async_request(request)
        )

    async def aclose(self) -> None:
        await self._transport.aclose()
