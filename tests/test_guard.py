"""The circuit state machine and the deadline estimator, driven by an injected clock."""

from __future__ import annotations

import errno
import logging
import threading

import pytest

from connguard import Config, EndpointUnavailable
from connguard._guard import Guard, Ticket, classify_failure

ENDPOINT = ("10.0.0.5", 4000)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_guard(clock: FakeClock, **settings: object) -> Guard:
    defaults: dict[str, object] = {"open_seconds": 5.0, "max_open_seconds": 40.0}
    defaults.update(settings)
    return Guard(Config.from_env({}, **defaults), clock=clock, rng=lambda: 0.5)


def admit(guard: Guard, endpoint: tuple[str, int] = ENDPOINT) -> Ticket:
    ticket = guard.admit(*endpoint)
    assert ticket is not None
    return ticket


def refused() -> OSError:
    return ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")


def state(guard: Guard) -> str:
    (record,) = [r for r in guard.status() if r["endpoint"] == "10.0.0.5:4000"]
    return str(record["state"])


def connect_once_then_fail(guard: Guard, failures: int) -> None:
    admit(guard).succeeded(0.01)
    for _ in range(failures):
        admit(guard).failed(refused())


def test_threshold_consecutive_failures_open() -> None:
    """A known-good endpoint opens after exactly failure_threshold consecutive failures."""
    guard = make_guard(FakeClock(), failure_threshold=3)
    connect_once_then_fail(guard, 2)
    assert state(guard) == "closed"
    admit(guard).failed(refused())
    assert state(guard) == "open"
    with pytest.raises(EndpointUnavailable) as info:
        guard.admit(*ENDPOINT)
    assert info.value.endpoint == "10.0.0.5:4000"
    assert info.value.retry_after == pytest.approx(5.0)


def test_success_resets_the_consecutive_count() -> None:
    """Failures must be consecutive: a success in between starts the count again."""
    guard = make_guard(FakeClock(), failure_threshold=3)
    connect_once_then_fail(guard, 2)
    admit(guard).succeeded(0.01)
    admit(guard).failed(refused())
    admit(guard).failed(refused())
    assert state(guard) == "closed"


def test_never_connected_endpoint_opens_on_first_failure() -> None:
    """An endpoint with no successful connect yet opens on its first failure."""
    guard = make_guard(FakeClock(), failure_threshold=3)
    admit(guard).failed(TimeoutError("timed out"))
    assert state(guard) == "open"


@pytest.mark.parametrize(
    "exc",
    [
        BlockingIOError(errno.EINPROGRESS, "in progress"),
        InterruptedError(errno.EINTR, "interrupted"),
        OSError(errno.EADDRNOTAVAIL, "cannot assign"),
        PermissionError(errno.EACCES, "denied"),
        ValueError("not an OSError"),
        KeyboardInterrupt(),
        EndpointUnavailable("fast"),
    ],
)
def test_non_endpoint_failures_are_never_counted(exc: BaseException) -> None:
    """BlockingIOError, local errors and non-OSErrors do not count against the endpoint."""
    guard = make_guard(FakeClock())
    admit(guard).failed(exc)
    assert state(guard) == "closed"
    assert classify_failure(exc) is None


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (TimeoutError("timed out"), "timeout"),
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), "refused"),
        (OSError(errno.EHOSTUNREACH, "no route"), "unreachable"),
        (OSError(errno.ENETUNREACH, "network unreachable"), "unreachable"),
    ],
)
def test_connect_phase_failures_are_classified(exc: OSError, kind: str) -> None:
    """Timeouts, refusals and unreachable errors count as connect-phase failures."""
    assert classify_failure(exc) == kind


def test_timeout_that_never_left_the_host_is_not_counted() -> None:
    """A timeout while the connect was held locally says nothing about the endpoint."""
    guard = make_guard(FakeClock())
    admit(guard).failed(TimeoutError("timed out"), left_host=False)
    assert state(guard) == "closed"


def test_recovery_waits_then_allows_exactly_one_trial() -> None:
    """After the wait one caller becomes the trial; the others keep failing fast."""
    clock = FakeClock()
    guard = make_guard(clock)
    admit(guard).failed(refused())
    clock.now += 4.9
    with pytest.raises(EndpointUnavailable):
        guard.admit(*ENDPOINT)
    clock.now += 0.2
    trial = admit(guard)
    assert trial.trial
    assert state(guard) == "half-open"
    with pytest.raises(EndpointUnavailable):
        guard.admit(*ENDPOINT)
    trial.succeeded(0.02)
    assert state(guard) == "closed"
    assert not admit(guard).trial


def test_failed_trial_reopens_with_growing_jittered_wait() -> None:
    """Each failed trial doubles the wait (with jitter) up to the cap."""
    clock = FakeClock()
    guard = make_guard(clock, open_seconds=5.0, max_open_seconds=40.0)
    admit(guard).failed(refused())
    waits = []
    for _ in range(5):
        record = guard.status()[0]
        waits.append(record["retry_after"])
        clock.now += float(record["retry_after"]) + 0.01
        admit(guard).failed(refused())
    # rng fixed at 0.5 -> jitter factor 1.0: 5, 10, 20, 40, 40 (capped)
    assert waits == [5.0, 10.0, 20.0, 40.0, 40.0]


def test_jitter_stays_within_twenty_percent() -> None:
    """The wait is the base times a factor in [0.8, 1.2]."""
    for value, factor in [(0.0, 0.8), (1.0, 1.2)]:
        clock = FakeClock()
        guard = Guard(
            Config.from_env({}, open_seconds=10.0, max_open_seconds=300.0),
            clock=clock,
            rng=lambda v=value: v,
        )
        admit(guard).failed(refused())
        assert guard.status()[0]["retry_after"] == pytest.approx(10.0 * factor)


def test_abandoned_trial_lets_the_next_caller_try() -> None:
    """A trial with no outcome (non-blocking connect) frees the trial slot."""
    clock = FakeClock()
    guard = make_guard(clock)
    admit(guard).failed(refused())
    clock.now += 10
    admit(guard).abandoned()
    assert admit(guard).trial


def test_lost_trial_lease_expires() -> None:
    """A trial whose thread never reports is replaced after its lease."""
    clock = FakeClock()
    guard = make_guard(clock, connect_timeout=2.0, min_connect_timeout=1.0)
    admit(guard).failed(refused())
    clock.now += 10
    assert admit(guard).trial  # and never reports
    clock.now += 3.0
    with pytest.raises(EndpointUnavailable):
        guard.admit(*ENDPOINT)
    clock.now += 1.1  # lease is 2 x ceiling
    assert admit(guard).trial


def test_concurrent_callers_get_one_trial() -> None:
    """Among many threads arriving together after the wait, exactly one is the trial."""
    clock = FakeClock()
    guard = make_guard(clock)
    admit(guard).failed(refused())
    clock.now += 10
    outcomes: list[str] = []
    barrier = threading.Barrier(16)

    def caller() -> None:
        barrier.wait()
        try:
            outcomes.append("trial" if admit(guard).trial else "plain")
        except EndpointUnavailable:
            outcomes.append("fast")

    threads = [threading.Thread(target=caller) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert sorted(outcomes) == ["fast"] * 15 + ["trial"]


def test_deadline_adapts_within_floor_and_ceiling() -> None:
    """The budget follows srtt + 4 rttvar of connect times, clamped to [floor, ceiling]."""
    guard = make_guard(FakeClock(), connect_timeout=3.0, min_connect_timeout=0.2)
    assert admit(guard).deadline == 3.0  # no evidence yet: the ceiling
    for _ in range(30):
        admit(guard).succeeded(0.001)
    assert admit(guard).deadline == pytest.approx(0.2)  # fast endpoint: the floor
    for _ in range(30):
        admit(guard).succeeded(0.5)
    assert 0.5 < (admit(guard).deadline or 0) < 3.0  # slow endpoint: in between
    for _ in range(5):
        admit(guard).succeeded(10.0)
    assert admit(guard).deadline == 3.0  # never above the ceiling


def test_override_sets_ceiling_and_priority() -> None:
    """CONNGUARD_OVERRIDES gives an endpoint its own ceiling and priority."""
    guard = Guard(
        Config.from_env(
            {"CONNGUARD_OVERRIDES": "10.0.0.5:4000 connect_timeout=0.5 priority=background"}
        )
    )
    ticket = admit(guard)
    assert ticket.deadline == 0.5
    assert ticket.health.background
    assert admit(guard, ("10.0.0.6", 4000)).deadline == 2.0


def test_include_and_exclude() -> None:
    """Excluded endpoints, and those outside CONNGUARD_INCLUDE, are not guarded."""
    guard = Guard(
        Config.from_env({"CONNGUARD_INCLUDE": "10.0.0.0/8", "CONNGUARD_EXCLUDE": "10.0.0.9:*"})
    )
    assert guard.admit("10.0.0.5", 1) is not None
    assert guard.admit("10.0.0.9", 1) is None
    assert guard.admit("192.0.2.1", 1) is None


def test_observe_mode_never_blocks_or_changes_deadlines(caplog: pytest.LogCaptureFixture) -> None:
    """Observe mode tracks state and logs what it would block, but blocks nothing."""
    guard = make_guard(FakeClock(), mode="observe")
    admit(guard).failed(refused())
    assert state(guard) == "open"
    with caplog.at_level(logging.WARNING, logger="connguard"):
        ticket = admit(guard)
    assert ticket.deadline is None
    assert "would fail fast" in caplog.text


def test_transitions_are_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """Opening and closing are each logged once with endpoint, reason and retry-after."""
    clock = FakeClock()
    guard = make_guard(clock)
    with caplog.at_level(logging.INFO, logger="connguard"):
        admit(guard).failed(refused())
        for _ in range(3):
            with pytest.raises(EndpointUnavailable):
                guard.admit(*ENDPOINT)
        clock.now += 10
        admit(guard).succeeded(0.01)
    opened = [r for r in caplog.records if "opened" in r.getMessage()]
    closed = [r for r in caplog.records if "closed" in r.getMessage()]
    assert len(opened) == 1
    assert len(closed) == 1
    assert "10.0.0.5:4000" in opened[0].getMessage()
    assert "refused" in opened[0].getMessage()
    assert "retry in 5.0 s" in opened[0].getMessage()


def test_registry_is_bounded_with_second_chance_eviction() -> None:
    """The table never exceeds max_endpoints; an entry used since the last eviction stays."""
    guard = make_guard(FakeClock(), max_endpoints=3)
    for port in (1, 2, 3, 4):  # the fourth evicts the oldest, clearing every used bit
        admit(guard, ("10.0.0.1", port)).succeeded(0.01)
    admit(guard, ("10.0.0.1", 2)).succeeded(0.01)  # 2 is used again, 3 is not
    admit(guard, ("10.0.0.1", 5))
    assert sorted(r["endpoint"] for r in guard.status()) == [
        "10.0.0.1:2",
        "10.0.0.1:4",
        "10.0.0.1:5",
    ]


def test_internal_fault_steps_aside(caplog: pytest.LogCaptureFixture) -> None:
    """An exception inside the decision lets the connect through and is logged once."""
    guard = make_guard(FakeClock())

    def broken(endpoint: tuple[str, int]) -> None:
        raise RuntimeError("bug in connguard")

    guard._new_health = broken  # type: ignore[assignment,method-assign]
    with caplog.at_level(logging.ERROR, logger="connguard"):
        assert guard.admit("10.0.0.1", 1) is None
        assert guard.admit("10.0.0.1", 2) is None
    assert caplog.text.count("internal error") == 1


def test_after_fork_clears_trials_and_renews_lock() -> None:
    """A child process starts with a fresh lock and no trial owned by a lost thread."""
    clock = FakeClock()
    guard = make_guard(clock)
    admit(guard).failed(refused())
    clock.now += 10
    assert admit(guard).trial
    guard.table.lock.acquire()  # as if another thread held it at fork time
    guard.after_fork()
    assert admit(guard).trial


def test_refuses_answers_like_admit_without_changing_anything() -> None:
    """refuses() is True exactly while admit() would fail fast, and counts nothing."""
    clock = FakeClock()
    guard = make_guard(clock)
    assert not guard.refuses(*ENDPOINT)  # never seen
    admit(guard).failed(refused())
    assert guard.refuses(*ENDPOINT)
    assert guard.status()[0]["fast_failures"] == 0
    clock.now += 10  # the wait is over: a trial is due, so no refusal
    assert not guard.refuses(*ENDPOINT)
    assert admit(guard).trial
    assert guard.refuses(*ENDPOINT)  # the trial is in flight: others fail fast


# -- cost-aware circuits and bounded outage extension (issue 10) ------------------------


@pytest.mark.parametrize("dead_for", [45.0, 240.0, 3600.0])
def test_recovery_checks_stay_bounded_however_long_the_endpoint_was_dead(
    dead_for: float,
) -> None:
    """After any length of outage the next recovery check is at most 3 s away."""
    clock = FakeClock()
    guard = Guard(Config.from_env({}), clock=clock, rng=lambda: 1.0)  # worst jitter
    admit(guard).failed(TimeoutError(errno.ETIMEDOUT, "timed out"))
    started = clock.now
    waits = []
    while clock.now - started < dead_for:
        retry_after = guard.status()[0]["retry_after"]
        waits.append(retry_after)
        clock.now += retry_after
        ticket = admit(guard)  # the trial (no prober here): the endpoint is still dead
        assert ticket.trial
        ticket.failed(TimeoutError(errno.ETIMEDOUT, "timed out"))
    assert max(waits) <= 3.0
    clock.now += guard.status()[0]["retry_after"]
    ticket = admit(guard)  # the endpoint is back: the next check finds it
    ticket.succeeded(0.001)
    assert state(guard) == "closed"


def test_fast_refusals_never_open_a_circuit() -> None:
    """Refusals that took no time are not counted, even for a never-connected endpoint."""
    guard = Guard(Config.from_env({}), clock=FakeClock())
    for _ in range(1000):
        admit(guard).failed(refused(), elapsed=0.0001)
    (record,) = guard.status()
    assert record["state"] == "closed"
    assert record["failures"] == 0
    assert record["cheap_failures"] == 1000


def test_slow_refusal_opens_and_fails_fast_as_a_refusal() -> None:
    """A refusal that took Windows' ~2 s opens a never-connected endpoint, as a refusal."""
    guard = Guard(Config.from_env({}), clock=FakeClock())
    admit(guard).failed(refused(), elapsed=2.0)
    with pytest.raises(EndpointUnavailable) as caught:
        guard.admit(*ENDPOINT)
    assert isinstance(caught.value, ConnectionRefusedError)
    assert caught.value.errno == errno.ECONNREFUSED


def test_timed_out_endpoint_fails_fast_as_a_timeout() -> None:
    """After a timeout the fast failure is a TimeoutError with ETIMEDOUT."""
    guard = Guard(Config.from_env({}), clock=FakeClock())
    admit(guard).failed(TimeoutError(errno.ETIMEDOUT, "timed out"))
    with pytest.raises(TimeoutError) as caught:
        guard.admit(*ENDPOINT)
    assert isinstance(caught.value, EndpointUnavailable)
    assert caught.value.errno == errno.ETIMEDOUT


def test_unreachable_endpoint_fails_fast_with_its_errno() -> None:
    """A slow EHOSTUNREACH (ARP's ~3 s) fails fast with EHOSTUNREACH, not a refusal."""
    guard = Guard(Config.from_env({}), clock=FakeClock())
    admit(guard).failed(OSError(errno.EHOSTUNREACH, "No route to host"), elapsed=3.0)
    with pytest.raises(EndpointUnavailable) as caught:
        guard.admit(*ENDPOINT)
    assert not isinstance(caught.value, ConnectionRefusedError | TimeoutError)
    assert caught.value.errno == errno.EHOSTUNREACH


def test_trial_answered_at_once_closes_the_circuit() -> None:
    """An open circuit whose trial is refused at once closes: failing fast saves nothing."""
    clock = FakeClock()
    guard = Guard(Config.from_env({}), clock=clock)
    admit(guard).failed(TimeoutError(errno.ETIMEDOUT, "timed out"))
    clock.now += 10
    trial = admit(guard)
    assert trial.trial
    trial.failed(refused(), elapsed=0.0002)
    assert state(guard) == "closed"
    assert guard.admit(*ENDPOINT) is not None
