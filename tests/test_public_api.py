"""The public face: exported names and the exception contract."""

from __future__ import annotations

import errno
import pickle

import pytest

import connguard
from connguard import (
    ConfigError,
    ConnectDeadlineExceeded,
    ConnguardError,
    EndpointRefused,
    EndpointTimedOut,
    EndpointUnavailable,
    EndpointUnreachable,
    LaneTimeout,
)


def test_all_lists_exactly_the_public_names() -> None:
    """__all__ is sorted and names every public attribute of the package."""
    public = {
        name
        for name in vars(connguard)
        if not name.startswith("_")
        and name != "annotations"
        and not isinstance(getattr(connguard, name), type(connguard))
    }
    assert sorted(connguard.__all__) == connguard.__all__
    assert public == set(connguard.__all__)


def test_version_is_a_string() -> None:
    """__version__ comes from the package metadata."""
    assert isinstance(connguard.__version__, str)


@pytest.mark.parametrize(
    ("cls", "builtin", "code"),
    [
        (EndpointRefused, ConnectionRefusedError, errno.ECONNREFUSED),
        (EndpointTimedOut, TimeoutError, errno.ETIMEDOUT),
        (EndpointUnreachable, OSError, errno.EHOSTUNREACH),
    ],
)
def test_fast_failures_are_the_builtin_of_their_kind(
    cls: type[EndpointUnavailable], builtin: type[OSError], code: int
) -> None:
    """Each fast failure is an EndpointUnavailable, a ConnguardError and its kind's builtin."""
    exc = cls("dead", "10.0.0.5:4000", 4.5)
    assert isinstance(exc, EndpointUnavailable)
    assert isinstance(exc, ConnguardError)
    assert isinstance(exc, builtin)
    assert exc.errno == code
    assert exc.endpoint == "10.0.0.5:4000"
    assert exc.retry_after == 4.5
    assert "dead" in str(exc)
    assert type(cls("only a message")) is cls  # ldap3 rebuilds errors from one string
    assert cls.__module__ == "connguard"


def test_timed_out_endpoint_is_not_a_refusal() -> None:
    """A timed-out endpoint's fast failure is not caught as a refused connect."""
    assert not isinstance(EndpointTimedOut("dead"), ConnectionRefusedError)


def test_endpoint_unavailable_survives_pickling() -> None:
    """A pickled EndpointUnavailable keeps its errno, endpoint and retry_after."""
    exc = pickle.loads(pickle.dumps(EndpointTimedOut("dead", "h:1", 2.0)))
    assert type(exc) is EndpointTimedOut
    assert (exc.errno, exc.endpoint, exc.retry_after, exc.strerror) == (
        errno.ETIMEDOUT,
        "h:1",
        2.0,
        "dead",
    )


@pytest.mark.parametrize("cls", [EndpointUnavailable, ConnectDeadlineExceeded, LaneTimeout])
def test_exceptions_are_constructible_from_one_string(cls: type[OSError]) -> None:
    """ldap3 rebuilds socket errors as type(exc)(str(exc)); that must work."""
    original = cls("some message")
    rebuilt = cls(str(original))
    assert isinstance(rebuilt, cls)
    assert "some message" in str(rebuilt)


def test_deadline_is_a_timeout() -> None:
    """ConnectDeadlineExceeded is a TimeoutError with ETIMEDOUT and survives pickling."""
    exc = pickle.loads(pickle.dumps(ConnectDeadlineExceeded("slow", "h:1", 1.5)))
    assert isinstance(exc, TimeoutError)
    assert (exc.errno, exc.endpoint, exc.deadline) == (errno.ETIMEDOUT, "h:1", 1.5)


def test_config_error_is_a_value_error() -> None:
    """ConfigError is caught by code that handles ValueError."""
    assert issubclass(ConfigError, ValueError)
