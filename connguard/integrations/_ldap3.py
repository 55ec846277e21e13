"""ldap3: binds never stall behind a dead directory server.

Hook points (ldap3 2.9, read from its source and checked by experiment):

- ``BaseStrategy._open_socket(address, use_ssl, unix_socket)`` runs once per
  candidate address of every new connection, including connections created
  before ``install()`` (``Connection.open`` is bound at ``__init__``, the
  strategy's ``_open_socket`` is looked up on the class). An endpoint whose
  circuit is open raises ``LDAPSocketOpenError`` (also an
  ``EndpointUnavailable``) at once, before a socket is made; ldap3 then tries
  the server's next address.
- ``Server.check_availability`` (the probe connect a ``ServerPool`` makes before
  every use of a server) answers "unavailable" from the circuit when every
  address of the server is open: no probe connect to a known-dead server.
- ``ServerPoolState.find_active_server`` / ``find_active_random_server`` raise
  ``LDAPServerPoolExhaustedError`` at once when every server of the pool is
  open, instead of cycling forever with 10 s sleeps (or spinning, for RANDOM).

Admission: with the socket integration installed (the default) the ldap3 layer
only *reads* the circuit and translates; the real ``socket.connect`` inside
``_open_socket`` is admitted once, per IP, by the socket wrapper, which also
bounds a ``Server(connect_timeout=None)`` by the endpoint's deadline without
touching the shared ``Server``. Admitting here as well would be a second
admission of the same key (a recovery trial would refuse itself). Without the
socket integration this layer admits and records outcomes itself.

Nothing here formats a ``Connection`` (its repr carries the bind password) or
any request: connguard's messages name only ``host:port``.
"""

from __future__ import annotations

import logging
import socket
import time
from contextvars import ContextVar
from typing import Any

from .._endpoint import Endpoint, format_endpoint
from .._errors import EndpointRefused, EndpointTimedOut, EndpointUnavailable, EndpointUnreachable
from .._guard import Guard, Ticket
from .._tcp import abort_connect, connect_left_host
from ._context import admitted_above
from ._hooks import when_imported
from ._patch import Patcher, Wrapper

__all__ = ["install"]

log = logging.getLogger("connguard")

_INET: tuple[int, ...] = (socket.AF_INET, socket.AF_INET6)
_MODE_FAMILIES: dict[str, tuple[int, ...]] = {
    "IP_V4_ONLY": (socket.AF_INET,),
    "IP_V6_ONLY": (socket.AF_INET6,),
}
# ldap3's own prefix of connection.last_error for a failed TCP connect (not TLS, not bind).
_OpenErrors = dict[type[EndpointUnavailable], Any]
_CONNECT_ERROR_PREFIX = "socket connection error while opening: "

# The ServerPoolState searching for an active server in this thread or task: lets
# check_availability end a search in which every server has become known dead.
_pool_search: ContextVar[Any] = ContextVar("connguard_ldap3_pool_search", default=None)


def install(guard: Guard) -> Patcher:
    """Patch ldap3 now if it is imported, else as soon as it is."""
    patcher = Patcher()
    when_imported(guard, "ldap3", lambda module: _patch(guard, patcher))
    return patcher


def _patch(guard: Guard, patcher: Patcher) -> None:
    try:
        from ldap3.core import exceptions, pooling, server
        from ldap3.strategy import base
    except Exception as exc:
        guard.contain("ldap3 import", exc)
        return
    # What ldap3's communication_exception_factory builds, made once: catchable as
    # LDAPSocketOpenError by ldap3 users and as EndpointUnavailable by connguard users.
    # Its str() is the bare message, so ldap3's rebuild ``type(e)(str(e))`` keeps it
    # readable instead of stacking "[Errno 111]" prefixes.
    # One per kind, so that the fast failure is also the builtin the endpoint last gave.
    open_errors: _OpenErrors = {
        kind: type(
            "LDAPSocketOpenError",
            (exceptions.LDAPSocketOpenError, kind),
            {"__str__": _bare_message},
        )
        for kind in (EndpointTimedOut, EndpointRefused, EndpointUnreachable)
    }
    exhausted = exceptions.LDAPServerPoolExhaustedError
    find_active = _pool_search_wrapper(guard, exhausted)
    wraps: list[tuple[Any, str, Wrapper]] = [
        (base.BaseStrategy, "_open_socket", _open_socket_wrapper(guard, open_errors)),
        (server.Server, "check_availability", _check_availability_wrapper(guard, exhausted)),
        (pooling.ServerPoolState, "find_active_server", find_active),
        (pooling.ServerPoolState, "find_active_random_server", find_active),
    ]
    for owner, attribute, wrapper in wraps:
        try:
            patcher.wrap(owner, attribute, wrapper)
        except Exception as exc:  # a future ldap3 without this hook: patch the rest
            guard.contain(f"ldap3 patch {attribute}", exc)


def _bare_message(error: OSError) -> str:
    return str(error.strerror)


# -- reading the circuit ----------------------------------------------------------------


def _server_endpoints(server: Any) -> list[Endpoint]:
    """The TCP endpoints ldap3 would try for ``server``, from its resolved addresses.

    Reads the cached resolution only (no DNS here); an unresolved server has none.
    """
    if getattr(server, "ipc", False):
        return []
    infos = getattr(server, "_address_info", None) or []
    mode = getattr(server, "mode", None)
    if mode == "IP_SYSTEM_DEFAULT":
        infos = infos[:1]  # ldap3 tries only the first address in this mode
    families = _MODE_FAMILIES.get(str(mode), _INET)
    return [(info[4][0], info[4][1]) for info in infos if info[0] in families]


def _server_refuses(guard: Guard, server: Any) -> bool:
    endpoints = _server_endpoints(server)
    return bool(endpoints) and all(guard.refuses(*endpoint) for endpoint in endpoints)


def _pool_refuses(guard: Guard, state: Any) -> bool:
    servers = [server_state.server for server_state in getattr(state, "server_states", ())]
    return bool(servers) and all(_server_refuses(guard, server) for server in servers)


def _exhausted_error(guard: Guard, state: Any, exhausted: type[Exception]) -> Exception:
    endpoints = [e for s in state.server_states for e in _server_endpoints(s.server)]
    now = guard.clock()
    waits = [
        max(0.0, health.retry_at - now)
        for health in map(guard.table.get, endpoints)
        if health is not None
    ]
    labels = ", ".join(format_endpoint(e) for e in endpoints)
    return exhausted(
        f"connguard: every server of the LDAP server pool is unavailable ({labels}); "
        f"next check in {min(waits, default=0.0):.1f} s"
    )


# -- BaseStrategy._open_socket ----------------------------------------------------------


def _endpoint_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Endpoint | None:
    address = args[0] if args else kwargs.get("address")
    if not address or address[0] not in _INET:
        return None  # ldapi:// (AF_UNIX) and anything unexpected pass through
    sockaddr = address[4]
    return (sockaddr[0], sockaddr[1])


def _open_socket_wrapper(guard: Guard, open_errors: _OpenErrors) -> Wrapper:
    admits_here = "socket" not in guard.config.integrations

    def _open_socket(
        wrapped: Any, strategy: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        ticket: Ticket | None = None
        try:
            endpoint = _endpoint_of(args, kwargs)
            if endpoint is not None:
                if admits_here:
                    ticket = guard.admit(*endpoint)
                elif guard.refuses(*endpoint):
                    # The guard's own decision: counts the fast failure, words the error.
                    late = guard.admit(*endpoint)
                    if late is not None:  # closed or trial due meanwhile: socket layer's turn
                        late.abandoned()
        except EndpointUnavailable as exc:
            raise _open_failure(strategy, open_errors, exc) from exc
        except Exception as exc:
            guard.contain("ldap3 _open_socket", exc)
        if ticket is None:
            return wrapped(*args, **kwargs)
        return _open_with_ticket(wrapped, strategy, ticket, args, kwargs)

    return _open_socket


def _open_failure(strategy: Any, open_errors: _OpenErrors, exc: EndpointUnavailable) -> Any:
    """ldap3's own shape of a failed open, built from connguard's fast failure."""
    message = _CONNECT_ERROR_PREFIX + str(exc.strerror)
    try:
        strategy.connection.last_error = message
    except Exception:
        pass
    kind = next((k for k in open_errors if isinstance(exc, k)), EndpointUnreachable)
    return open_errors[kind](message, exc.endpoint, exc.retry_after, exc.errno)


def _open_with_ticket(
    wrapped: Any, strategy: Any, ticket: Ticket, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Without the socket integration: this layer owns the ticket and its outcome.

    No deadline can be imposed here without mutating the shared ``Server``; the
    connect is bounded by ``Server.connect_timeout`` (or the OS) in this mode.
    """
    token = admitted_above.set(True)
    started = time.monotonic()
    try:
        result = wrapped(*args, **kwargs)
    except Exception as exc:
        _report_open_failure(ticket, strategy, exc, time.monotonic() - started)
        raise
    except BaseException:
        ticket.abandoned()
        raise
    finally:
        admitted_above.reset(token)
    ticket.succeeded(time.monotonic() - started)
    return result


def _report_open_failure(ticket: Ticket, strategy: Any, exc: Exception, elapsed: float) -> None:
    connection = getattr(strategy, "connection", None)
    last_error = str(getattr(connection, "last_error", "") or "")
    if not last_error.startswith(_CONNECT_ERROR_PREFIX):
        ticket.abandoned()  # TLS or receive-timeout setup failed: the TCP connect did not
        return
    left_host = True
    sock = getattr(connection, "socket", None)
    if isinstance(exc, TimeoutError):
        if isinstance(sock, socket.socket):
            left_host = connect_left_host(sock)
            abort_connect(sock)  # ldap3 keeps the socket: do not leave it in SYN_SENT
        own = getattr(getattr(connection, "server", None), "connect_timeout", None)
        ticket.timed_out(exc, own if isinstance(own, int | float) else None, left_host=left_host)
        return
    ticket.failed(exc, elapsed=elapsed, left_host=left_host)


# -- Server.check_availability and the ServerPool search -------------------------------


def _check_availability_wrapper(guard: Guard, exhausted: type[Exception]) -> Wrapper:
    def check_availability(
        wrapped: Any, server: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        try:
            known_dead = _server_refuses(guard, server)
            if known_dead:
                _mark_unavailable(server)
        except Exception as exc:
            guard.contain("ldap3 check_availability", exc)
            known_dead = False
        available = False if known_dead else wrapped(*args, **kwargs)
        if not available:
            _end_dead_pool_search(guard, exhausted)
        return available

    return check_availability


def _mark_unavailable(server: Any) -> None:
    """What ldap3's own failed probe leaves behind, without the probe connect."""
    server.reset_availability()
    for address in list(getattr(server, "_address_info", None) or []):
        server.update_availability(address, False)
    log.debug(
        "ldap3: %s answered unavailable from the circuit, no probe connect",
        ", ".join(map(format_endpoint, _server_endpoints(server))),
    )


def _end_dead_pool_search(guard: Guard, exhausted: type[Exception]) -> None:
    """Inside a pool search: raise once every server of the pool is known dead."""
    state = _pool_search.get()
    if state is None:
        return
    try:
        error = _exhausted_error(guard, state, exhausted) if _pool_refuses(guard, state) else None
    except Exception as exc:
        guard.contain("ldap3 pool search", exc)
        return
    if error is not None:
        raise error


def _pool_search_wrapper(guard: Guard, exhausted: type[Exception]) -> Wrapper:
    def find_active(wrapped: Any, state: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            error = (
                _exhausted_error(guard, state, exhausted) if _pool_refuses(guard, state) else None
            )
        except Exception as exc:
            guard.contain("ldap3 pool search", exc)
            error = None
        if error is not None:
            raise error
        token = _pool_search.set(state)
        try:
            return wrapped(*args, **kwargs)
        finally:
            _pool_search.reset(token)

    return find_active
