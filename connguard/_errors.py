"""Exceptions raised by connguard.

Each one subclasses the builtin a caller already catches, so code written
before connguard keeps working: a fast failure is a ``ConnectionRefusedError``,
a connguard-imposed deadline is a ``TimeoutError``, bad configuration is a
``ValueError``. All are picklable and constructible from one string (ldap3
rebuilds socket errors as ``type(exc)(str(exc))``).
"""

from __future__ import annotations

import errno
from typing import Any

__all__ = ["ConfigError", "ConnectDeadlineExceeded", "EndpointUnavailable", "LaneTimeout"]


class EndpointUnavailable(ConnectionRefusedError):
    """A connect refused by connguard because the endpoint is known to be dead.

    No SYN was sent. ``errno`` is ``ECONNREFUSED``; ``endpoint`` is ``"host:port"``
    and ``retry_after`` the seconds until connguard next checks the endpoint
    (``None`` when unknown).
    """

    endpoint: str | None
    retry_after: float | None

    def __init__(
        self,
        message: str = "endpoint unavailable",
        endpoint: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(errno.ECONNREFUSED, message)
        self.endpoint = endpoint
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.strerror, self.endpoint, self.retry_after))


class ConnectDeadlineExceeded(TimeoutError):
    """A connect cut short by connguard's deadline (not by the caller's own timeout).

    ``errno`` is ``ETIMEDOUT``; ``endpoint`` and ``deadline`` (seconds) say which
    budget ran out.
    """

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


class LaneTimeout(ConnectDeadlineExceeded):
    """A connect that the connect lane could not serve within its deadline.

    No SYN was sent for the attempt that failed, and it is not counted against
    the endpoint. ``endpoint`` and ``deadline`` as for ``ConnectDeadlineExceeded``.
    """


class ConfigError(ValueError):
    """A ``CONNGUARD_*`` variable or an ``install()`` keyword has a bad value.

    The message names the variable, the value given and what is accepted.
    """
