"""The public face: exported names and the exception contract."""

from __future__ import annotations

import errno
import pickle

import pytest

import connguard
from connguard import ConfigError, ConnectDeadlineExceeded, EndpointUnavailable, LaneTimeout


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


def test_endpoint_unavailable_is_a_refused_connect() -> None:
    """EndpointUnavailable is caught by code that handles a refused connect."""
    exc = EndpointUnavailable("dead", "10.0.0.5:4000", 4.5)
    assert isinstance(exc, ConnectionRefusedError)
    assert isinstance(exc, OSError)
    assert exc.errno == errno.ECONNREFUSED
    assert exc.endpoint == "10.0.0.5:4000"
    assert exc.retry_after == 4.5
    assert "dead" in str(exc)


def test_endpoint_unavailable_survives_pickling() -> None:
    """A pickled EndpointUnavailable keeps its errno, endpoint and retry_after."""
    exc = pickle.loads(pickle.dumps(EndpointUnavailable("dead", "h:1", 2.0)))
    assert (exc.errno, exc.endpoint, exc.retry_after, exc.strerror) == (
        errno.ECONNREFUSED,
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
