"""Exceptions raised by connguard.

Every public error has the root ``ConnguardError`` mixed in and subclasses the
builtin a caller already catches, so code written before connguard keeps
working. A fast failure looks like the failure the endpoint last gave: an
endpoint that timed out fails fast as a ``TimeoutError`` (``ETIMEDOUT``), a
refusing one as a ``ConnectionRefusedError`` (``ECONNREFUSED``), an unreachable
one as an ``OSError`` with its errno; all three are ``EndpointUnavailable``. A
connguard-imposed deadline is a ``TimeoutError``, bad configuration a
``ValueError``. All are picklable and constructible from one string (ldap3
rebuilds socket errors as ``type(exc)(str(exc))``).
"""

from __future__ import annotations

import errno
from typing import Any, ClassVar

__all__ = [
    "ConfigError",
    "ConnectDeadlineExceeded",
    "ConnguardError",
    "EndpointRefused",
    "EndpointTimedOut",
    "EndpointUnavailable",
    "EndpointUnreachable",
    "LaneTimeout",
    "unavailable_error",
]


class ConnguardError(Exception):
    """The root of every exception connguard raises (``except connguard.ConnguardError``)."""


class EndpointUnavailable(ConnguardError, OSError):
    """A connect failed fast because connguard knows the endpoint is dead.

    No SYN was sent. connguard raises one of the three subclasses, chosen by the
    endpoint's last real failure: ``EndpointTimedOut`` (a ``TimeoutError``),
    ``EndpointRefused`` (a ``ConnectionRefusedError``) or ``EndpointUnreachable``
    (its errno, e.g. ``EHOSTUNREACH``). ``endpoint`` is ``"host:port"`` and
    ``retry_after`` the seconds until connguard next checks the endpoint
    (``None`` when unknown).
    """

    default_errno: ClassVar[int] = errno.EHOSTUNREACH
    endpoint: str | None
    retry_after: float | None

    def __init__(
        self,
        message: str = "endpoint unavailable",
        endpoint: str | None = None,
        retry_after: float | None = None,
        code: int | None = None,
    ) -> None:
        super().__init__(self.default_errno if code is None else code, message)
        self.endpoint = endpoint
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.strerror, self.endpoint, self.retry_after, self.errno))


class EndpointTimedOut(EndpointUnavailable, TimeoutError):
    """Fast failure of an endpoint whose last connects timed out (``ETIMEDOUT``)."""

    default_errno = errno.ETIMEDOUT


class EndpointRefused(EndpointUnavailable, ConnectionRefusedError):
    """Fast failure of an endpoint whose last connects were refused (``ECONNREFUSED``)."""

    default_errno = errno.ECONNREFUSED


class EndpointUnreachable(EndpointUnavailable):
    """Fast failure of an unreachable endpoint; ``errno`` is the one it last gave."""


_BY_KIND: dict[str, type[EndpointUnavailable]] = {
    "timeout": EndpointTimedOut,
    "refused": EndpointRefused,
    "unreachable": EndpointUnreachable,
}


def unavailable_error(
    kind: str | None,
    code: int | None,
    message: str,
    endpoint: str,
    retry_after: float | None,
) -> EndpointUnavailable:
    """The fast failure for an endpoint whose last real failure was of ``kind``."""
    cls = _BY_KIND.get(kind or "unreachable", EndpointUnreachable)
    return cls(message, endpoint, retry_after, code if cls is EndpointUnreachable else None)


class _OutOfTime(ConnguardError, TimeoutError):
    """A connect connguard gave up on in time (``ETIMEDOUT``); ``endpoint``, ``deadline``."""

    endpoint: str | None
    deadline: float | None

    def __init__(
        self,
        message: str = "connect deadline exceeded",
        endpoint: str | None = None,
        deadline: float | None = None,
    ) -> None:
        super().__init__(errno.ETIMEDOUT, message)
        self.endpoint = endpoint
        self.deadline = deadline

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.strerror, self.endpoint, self.deadline))


class ConnectDeadlineExceeded(_OutOfTime):
    """A connect cut short by connguard's deadline (not by the caller's own timeout).

    ``errno`` is ``ETIMEDOUT``; ``endpoint`` and ``deadline`` (seconds) say which
    budget ran out.
    """


class LaneTimeout(_OutOfTime):
    """A connect that the connect lane could not serve within its deadline.

    No SYN was sent for the attempt that failed, and it is not counted against
    the endpoint (it says nothing about it). ``endpoint`` and ``deadline`` as for
    ``ConnectDeadlineExceeded``; it is not one (that one is evidence, this is not).
    """


class ConfigError(ConnguardError, ValueError):
    """A ``CONNGUARD_*`` variable or an ``install()`` keyword has a bad value.

    The message names the variable, the value given and what is accepted.
    """


# Tracebacks and reprs show the public path (connguard.EndpointTimedOut), and pickle
# finds the classes there.
for _cls in (
    ConnguardError,
    EndpointUnavailable,
    EndpointTimedOut,
    EndpointRefused,
    EndpointUnreachable,
    ConnectDeadlineExceeded,
    LaneTimeout,
    ConfigError,
):
    _cls.__module__ = "connguard"
del _cls
