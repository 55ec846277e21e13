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
