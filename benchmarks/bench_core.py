"""Core benchmarks: healthy-path overhead, fail-fast cost, decision cost vs table size.

Run: .venv/bin/python benchmarks/bench_core.py [--json] [--rounds N]

Every figure is a ratio against a baseline measured in the same run (these
machines are shared and noisy), except the fail-fast latency, which is absolute.
The healthy-path shapes run four variants interleaved, the order rotated each
round: unguarded, two floors (a do-nothing wrapt ``FunctionWrapper`` and a plain
Python function replacing ``socket.socket.connect``) and connguard, so that every
row is a ratio against the unguarded run of its own round and sits beside what
any wrapper at all costs.

Shapes: a fresh listener per round that never accepts; a server thread in this
process accepting and closing (an application that also serves); and 32 client
threads connecting to a server in another process (connects per second: there the
time each connect holds the GIL bounds the throughput).
"""

from __future__ import annotations

import _socket
import argparse
import gc
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import wrapt
from _interleave import interleaved_variants

import connguard
from connguard import Config, EndpointUnavailable
from connguard._guard import Guard

TARGETS = {
    "healthy_ratio": 1.03,
    "accepting_ratio": 1.05,
    "threads_ratio": 0.9,
    "fail_fast_us": 5.0,
    "decision_flatness": 1.2,
}
_THREADS = 32

Variants = dict[str, tuple[Callable[[], None], Callable[[], None]]]


def _listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    return sock


def _unpatch() -> None:
    if "connect" in vars(socket.socket):
        del socket.socket.connect


def _wrapt_floor() -> None:
    def passthrough(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        return wrapped(*args, **kwargs)

    socket.socket.connect = wrapt.FunctionWrapper(  # type: ignore[method-assign]
        vars(_socket.socket)["connect"], passthrough
    )


def _plain_floor() -> None:
    original = vars(_socket.socket)["connect"]

    def connect(sock: Any, address: Any, /) -> Any:
        return original(sock, address)

    socket.socket.connect = connect  # type: ignore[method-assign]


def variants() -> Variants:
    """unguarded (the baseline), the two floors, connguard with its defaults."""
    return {
        "unguarded": (lambda: None, lambda: None),
        "wrapt_floor": (_wrapt_floor, _unpatch),
        "plain_floor": (_plain_floor, _unpatch),
        "connguard": (lambda: connguard.install(environ={}) and None, connguard.uninstall),
    }


def _connect_loop(address: Any, connects: int) -> float:
    gc.disable()
    try:
        started = time.perf_counter()
        for _ in range(connects):
            sock = socket.socket()
            sock.connect(address)
            sock.close()
        return (time.perf_counter() - started) / connects
    finally:
        gc.enable()


def healthy_connect_round(connects: int) -> float:
    """Mean seconds of one loopback connect + close (a fresh listener per round)."""
    with _listener() as listener:
        return _connect_loop(listener.getsockname(), connects)


def accepting_round(connects: int) -> float:
    """Mean seconds of one connect + close to a server thread of this process."""
    listener = _listener()
    address = listener.getsockname()

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        return _connect_loop(address, connects)
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes accept() with an error
        listener.close()
        thread.join(2.0)


_SERVER = """
import socket, sys
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", 0))
listener.listen(4096)
print(listener.getsockname()[1], flush=True)
while True:
    conn, _ = listener.accept()
    conn.close()
"""


def threads_round(address: Any, seconds: float) -> float:
    """Connects per second of 32 threads connecting and closing for ``seconds``."""
    counts = [0] * _THREADS
    start = threading.Barrier(_THREADS + 1)
    stop_at = [0.0]

    def client(i: int) -> None:
        start.wait()
        done = 0
        end = stop_at[0]
        while time.perf_counter() < end:
            sock = socket.socket()
            try:
                sock.connect(address)
            except OSError:
                pass  # a full backlog: counted as nothing
            else:
                done += 1
            sock.close()
        counts[i] = done

    threads = [threading.Thread(target=client, args=(i,)) for i in range(_THREADS)]
    for thread in threads:
        thread.start()
    stop_at[0] = time.perf_counter() + seconds
    started = time.perf_counter()
    start.wait()
    for thread in threads:
        thread.join(seconds + 10)
    return sum(counts) / (time.perf_counter() - started)


def bench_shape(block: Callable[[], float], rounds: int) -> dict[str, dict[str, float]]:
    return interleaved_variants(block, variants(), rounds)


def bench_healthy(rounds: int, connects: int) -> dict[str, Any]:
    healthy_connect_round(200)  # warm up
    shapes: dict[str, Any] = {
        "no_accept": bench_shape(lambda: healthy_connect_round(connects), rounds),
        "accepting": bench_shape(lambda: accepting_round(connects), rounds),
    }
    server = subprocess.Popen(
        [sys.executable, "-c", _SERVER], stdout=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    try:
        assert server.stdout is not None
        address = ("127.0.0.1", int(server.stdout.readline()))
        threads_round(address, 0.2)  # warm up
        shapes["threads"] = bench_shape(lambda: threads_round(address, 0.5), max(6, rounds // 2))
    finally:
        server.terminate()
        server.wait(5)
    return shapes


def bench_fail_fast(calls: int) -> dict[str, float]:
    """Median latency of a connect to an open endpoint (socket made outside the timing)."""
    with _listener() as listener:
        port = listener.getsockname()[1]
    connguard.install(environ={}, open_seconds=3600, max_open_seconds=3600)
    try:
        try:
            socket.create_connection(("127.0.0.1", port)).close()
        except ConnectionRefusedError:
            pass  # opens the circuit (never connected: first failure)
        samples = []
        for _ in range(calls):
            sock = socket.socket()
            started = time.perf_counter_ns()
            try:
                sock.connect(("127.0.0.1", port))
            except EndpointUnavailable:
                pass
            samples.append(time.perf_counter_ns() - started)
            sock.close()
    finally:
        connguard.uninstall()
    return {"fail_fast_us": statistics.median(samples) / 1000}


def _time_admit(admit: Callable[[str, int], object], host: str, port: int, calls: int) -> float:
    best = float("inf")
    for _ in range(7):  # best of several batches: the decision itself, not the noise
        started = time.perf_counter()
        for _ in range(calls):
            admit(host, port)
        best = min(best, (time.perf_counter() - started) / calls)
    return best


def bench_decision(sizes: tuple[int, ...], calls: int) -> dict[str, float]:
    result: dict[str, float] = {}
    for size in sizes:
        guard = Guard(Config.from_env({}, max_endpoints=max(sizes) * 2))
        for i in range(size):
            ticket = guard.admit(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 443)
            assert ticket is not None
            ticket.succeeded(0.001)
        probe = (f"10.{size // 2 >> 16 & 255}.{size // 2 >> 8 & 255}.{size // 2 & 255}", 443)
        result[f"decision_ns_{size}"] = _time_admit(guard.admit, *probe, calls) * 1e9
    values = [result[f"decision_ns_{s}"] for s in sizes]
    result["decision_flatness"] = max(values) / min(values)
    return result


_SHAPES = [
    ("no_accept", "loopback connect+close, fresh listener, no accept", "µs", "healthy_ratio"),
    ("accepting", "same, server thread in this process accepting", "µs", "accepting_ratio"),
    ("threads", f"{_THREADS} threads, server in another process", "connects/s", "threads_ratio"),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=16, help="interleaved rounds (16)")
    parser.add_argument("--connects", type=int, default=1000, help="connects per round")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)

    shapes = bench_healthy(args.rounds, args.connects)
    results: dict[str, float] = {}
    for shape, _, _, target in _SHAPES:
        results[target] = shapes[shape]["connguard"]["ratio"]
    results.update(bench_fail_fast(20_000))
    results.update(bench_decision((10, 10_000, 100_000), 50_000))
    passed = {
        key: (results[key] >= target if key == "threads_ratio" else results[key] <= target)
        for key, target in TARGETS.items()
    }
    if args.json:
        print(
            json.dumps(
                {"shapes": shapes, "results": results, "targets": TARGETS, "passed": passed},
                indent=2,
            )
        )
        return 0 if all(passed.values()) else 1
    print("| shape | unit | unguarded | wrapt floor | plain floor | connguard | target |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for shape, label, unit, target in _SHAPES:
        row = shapes[shape]
        scale = 1e6 if unit == "µs" else 1.0
        cells = [f"{row['unguarded']['value'] * scale:.1f}"] + [
            f"{row[v]['ratio']:.3f} ({row[v]['ratio_p10']:.2f}-{row[v]['ratio_p90']:.2f})"
            for v in ("wrapt_floor", "plain_floor", "connguard")
        ]
        sign = "≥" if target == "threads_ratio" else "≤"
        mark = "PASS" if passed[target] else "FAIL"
        print(f"| {label} | {unit} | {' | '.join(cells)} | {sign} {TARGETS[target]} {mark} |")
    print()
    print("| measure | value | target |")
    print("| --- | --- | --- |")
    for key, label in [
        ("fail_fast_us", "fail fast on an open endpoint, median µs"),
        ("decision_flatness", "decision cost, max/min over 10, 10k, 100k endpoints"),
    ]:
        mark = "PASS" if passed[key] else "FAIL"
        print(f"| {label} | {results[key]:.3f} | ≤ {TARGETS[key]} {mark} |")
    for size in (10, 10_000, 100_000):
        print(f"| decision, {size} endpoints | {results[f'decision_ns_{size}']:.0f} ns | |")
    return 0 if all(passed.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
