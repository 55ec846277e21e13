"""A hypothesis state machine over the circuit, with an injected clock (deliverable 5).

Expensive failures are modelled as ``TimeoutError`` (a connect that cost the
caller its deadline); the exact rules for cheap refusals are not asserted here.
"""

from __future__ import annotations

import errno
import logging
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from connguard import Config, EndpointUnavailable
from connguard._guard import Guard, Ticket

ENDPOINTS = [("10.0.0.1", 80), ("10.0.0.2", 443)]
endpoints = st.sampled_from(ENDPOINTS)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class Circuit(RuleBasedStateMachine):
    """Connect outcomes and time passing, in any order, against one Guard."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self.config = Config.from_env(
            {}, failure_threshold=2, open_seconds=1.0, max_open_seconds=8.0, connect_timeout=2.0
        )
        self.guard = Guard(self.config, clock=lambda: self.now, rng=lambda: 0.5)
        self.trials: dict[tuple[str, int], Ticket] = {}  # outstanding trial per endpoint
        self.records = _Records()
        self.logger = logging.getLogger("connguard")
        self.logger.addHandler(self.records)
        self.level = self.logger.level
        self.logger.setLevel(logging.DEBUG)

    def teardown(self) -> None:
        self.logger.removeHandler(self.records)
        self.logger.setLevel(self.level)

    def _is_open(self, endpoint: tuple[str, int]) -> bool:
        health = self.guard.table.get(endpoint)
        return health is not None and health.is_open

    def _admit(self, endpoint: tuple[str, int]) -> Ticket | None:
        try:
            ticket = self.guard.admit(*endpoint)
        except EndpointUnavailable:
            return None
        assert ticket is not None
        if ticket.trial:
            # Exactly one trial at a time: no second one while ours is outstanding.
            assert endpoint not in self.trials
        return ticket

    def _report(self, endpoint: tuple[str, int], report: Any) -> None:
        before = self._is_open(endpoint)
        logged = len(self.records.messages)
        report()
        after = self._is_open(endpoint)
        new = self.records.messages[logged:]
        # Each transition is logged exactly once; no transition, no transition line.
        assert len([m for m in new if ": opened after" in m]) == (not before and after)
        assert len([m for m in new if ": closed" in m]) == (before and not after)

    @rule(endpoint=endpoints, elapsed=st.floats(0.0001, 1.0))
    def connect_succeeds(self, endpoint: tuple[str, int], elapsed: float) -> None:
        ticket = self._admit(endpoint)
        if ticket is not None and not ticket.trial:
            self._report(endpoint, lambda: ticket.succeeded(elapsed))

    @rule(endpoint=endpoints)
    def connect_times_out(self, endpoint: tuple[str, int]) -> None:
        ticket = self._admit(endpoint)
        if ticket is not None and not ticket.trial:
            exc = TimeoutError(errno.ETIMEDOUT, "connect deadline exceeded")
            self._report(endpoint, lambda: ticket.failed(exc))

    @rule(endpoint=endpoints)
    def trial_starts(self, endpoint: tuple[str, int]) -> None:
        ticket = self._admit(endpoint)
        if ticket is not None and ticket.trial:
            self.trials[endpoint] = ticket

    @precondition(lambda self: self.trials)
    @rule(data=st.data(), outcome=st.sampled_from(["succeeded", "timed out", "abandoned"]))
    def trial_ends(self, data: st.DataObject, outcome: str) -> None:
        endpoint = data.draw(st.sampled_from(sorted(self.trials)))
        ticket = self.trials.pop(endpoint)
        if outcome == "succeeded":
            self._report(endpoint, lambda: ticket.succeeded(0.01))
            assert not self._is_open(endpoint)
        elif outcome == "timed out":
            exc = TimeoutError(errno.ETIMEDOUT, "connect deadline exceeded")
            self._report(endpoint, lambda: ticket.failed(exc))
            assert self._is_open(endpoint)
        else:
            ticket.abandoned()

    def _advance(self, seconds: float) -> None:
        self.now += seconds
        # A trial whose thread never reports loses its lease after 2 x the ceiling.
        for endpoint in [e for e, t in self.trials.items() if t.health.trial_until <= self.now]:
            del self.trials[endpoint]

    @rule(seconds=st.floats(0.0, 20.0))
    def time_passes(self, seconds: float) -> None:
        self._advance(seconds)

    @rule(endpoint=endpoints)
    def waiting_long_enough_yields_a_trial(self, endpoint: tuple[str, int]) -> None:
        """An open endpoint with no outstanding trial gives a caller a trial after the wait."""
        if not self._is_open(endpoint) or endpoint in self.trials:
            return
        self._advance(self.config.max_open_seconds * 1.2 + 2 * self.config.connect_timeout)
        ticket = self._admit(endpoint)
        assert ticket is not None
        assert ticket.trial
        self.trials[endpoint] = ticket

    @invariant()
    def never_stuck_open(self) -> None:
        """Once the longest wait and any trial's lease are over, a caller gets a trial."""
        for endpoint in ENDPOINTS:
            if not self._is_open(endpoint) or endpoint in self.trials:
                continue
            health = self.guard.table.get(endpoint)
            assert health is not None
            horizon = self.config.max_open_seconds * 1.2 + 2 * self.config.connect_timeout
            assert health.retry_at <= self.now + horizon
            assert health.trial_until <= self.now + 2 * self.config.connect_timeout


Circuit.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestCircuit = Circuit.TestCase
TestCircuit.__doc__ = "The circuit is never stuck open, has one trial at a time, logs once."
