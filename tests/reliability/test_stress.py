"""Threads, install/uninstall cycles and fork, all under load, against real loopback peers."""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from contextlib import closing

import connguard
from connguard.testing import blackhole, tcp_server

THREADS = 64
STRESS_SECONDS = 6.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_64_threads_live_refused_and_blackholed() -> None:
    """64 threads for seconds: only OSErrors, no deadlock, and live connects get through.

    The one-thread test server cannot accept as fast as 64 threads connect, so
    some live connects meet a full accept queue: those may fail, as OSErrors.
    """
    connguard.install(environ={}, connect_timeout=0.3, min_connect_timeout=0.2, open_seconds=0.5)
    unexpected: list[BaseException] = []
    live_successes: list[bool] = []
    counts = [0]
    with tcp_server() as live, blackhole() as dead:
        targets = [live.address, ("127.0.0.1", _free_port()), dead.address]
        stop = time.monotonic() + STRESS_SECONDS

        def worker(seed: int) -> None:
            rng = random.Random(seed)
            while time.monotonic() < stop:
                target = rng.choice(targets)
                try:
                    with closing(socket.socket()) as sock:
                        sock.connect(target)
                    if target == live.address:
                        live_successes.append(True)
                except OSError:
                    pass
                except BaseException as exc:
                    unexpected.append(exc)
                counts[0] += 1

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(STRESS_SECONDS + 10)
        assert not any(t.is_alive() for t in threads)  # no deadlock
    assert unexpected == []
    assert len(live_successes) > THREADS
    assert counts[0] > THREADS


def test_install_uninstall_cycles_under_load() -> None:
    """Connects from 16 threads keep succeeding while connguard is installed and removed."""
    failures: list[BaseException] = []
    done = threading.Event()
    with tcp_server() as live:

        def worker() -> None:
            while not done.is_set():
                try:
                    with closing(socket.socket()) as sock:
                        sock.settimeout(5.0)
                        sock.connect(live.address)
                except BaseException as exc:
                    failures.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(16)]
        for thread in threads:
            thread.start()
        try:
            for _ in range(30):
                connguard.install(environ={})
                time.sleep(0.02)
                connguard.uninstall()
        finally:
            done.set()
            for thread in threads:
                thread.join(10)
    assert failures == []
    assert not connguard.is_installed()


def test_fork_while_a_connect_is_in_flight() -> None:
    """A child forked mid-connect gets a working guard; the parent's connect keeps its deadline."""
    connguard.install(environ={}, connect_timeout=1.0, min_connect_timeout=1.0, open_seconds=30)
    with tcp_server() as live, blackhole() as dead:
        outcome: list[BaseException | None] = []

        def connecting() -> None:
            try:
                with closing(socket.socket()) as sock:
                    sock.connect(dead.address)
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=connecting)
        started = time.monotonic()
        thread.start()
        time.sleep(0.2)
        pid = os.fork()
        if pid == 0:  # the child: exit code says what worked
            code = 1
            try:
                socket.create_connection(live.address, timeout=3).close()
                with closing(socket.socket()) as sock:
                    sock.settimeout(20)
                    began = time.monotonic()
                    try:
                        sock.connect(dead.address)
                    except TimeoutError:
                        code = 0 if time.monotonic() - began < 5 else 2
            finally:
                os._exit(code)
        deadline = time.monotonic() + 15
        status = None
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        thread.join(10)
        assert status is not None
        assert os.waitstatus_to_exitcode(status) == 0
        assert len(outcome) == 1
        assert isinstance(outcome[0], TimeoutError)
        assert time.monotonic() - started < 10
