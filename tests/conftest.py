"""Shared fixtures: every test leaves connguard uninstalled and its state forgotten."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import connguard


@pytest.fixture(autouse=True)
def _connguard_uninstalled() -> Iterator[None]:
    """Start and end every test with connguard not installed."""
    connguard.uninstall()
    yield
    connguard.uninstall()


@pytest.fixture
def every_failure_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """CONNGUARD_COSTLY_FAILURE=0: a fast loopback refusal counts like a costly one.

    For tests of fail-fast mechanics that use a refused loopback port as their dead
    endpoint; the default rule (fast refusals never open) is tested in test_invisible.
    """
    monkeypatch.setenv("CONNGUARD_COSTLY_FAILURE", "0")  # children and os.environ readers
    # install(environ={...}) too: the default itself, restored after the test.
    defaults = connguard.Config.__init__.__kwdefaults__
    assert defaults is not None
    monkeypatch.setitem(defaults, "costly_failure", 0.0)
