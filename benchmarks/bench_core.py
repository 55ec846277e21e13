"""Core benchmarks: healthy-path overhead, fail-fast cost, decision cost vs table size.

Run: .venv/bin/python benchmarks/bench_core.py [--json] [--rounds N]

Every figure is a ratio against a baseline measured in the same run (these
machines are shared and noisy), except the fail-fast latency, which is absolute.
Guarded and unguarded rounds are interleaved so drift hits both alike.
"""

from __future__ import annotations

import argparse
import gc
import json
import socket
import statistics
import sys
import time
from collections.abc import Callable

import connguard
from connguard import Config, EndpointUnavailable
from connguard._guard import Guard

TARGETS = {"healthy_ratio": 1.08, "fail_fast_us": 10.0, "decision_flatness": 1.2}


def _listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    return sock


def healthy_connect_round(connects: int) -> float:
    """Mean seconds of one loopback connect + close (a fresh listener per round)."""
    with _listener() as listener:
        address = listener.getsockname()
        gc.disable()
        try:
            started = time.perf_counter()
            for _ in range(connects):
                sock = socket.socket()
                sock.connect(address)
                sock.close()
            elapsed = time.perf_counter() - started
        finally:
            gc.enable()
    return elapsed / connects


def bench_healthy(rounds: int, connects: int) -> dict[str, float]:
    plain: list[float] = []
    guarded: list[float] = []
    healthy_connect_round(200)  # warm up
    for _ in range(rounds):
        plain.append(healthy_connect_round(connects))
        connguard.install(environ={})
        try:
            guarded.append(healthy_connect_round(connects))
        finally:
            connguard.uninstall()
    base, with_guard = statistics.median(plain), statistics.median(guarded)
    return {
        "unguarded_us": base * 1e6,
        "guarded_us": with_guard * 1e6,
        "healthy_ratio": with_guard / base,
    }


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=25, help="interleaved rounds (25)")
    parser.add_argument("--connects", type=int, default=1000, help="connects per round")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)

    results: dict[str, float] = {}
    results.update(bench_healthy(args.rounds, args.connects))
    results.update(bench_fail_fast(20_000))
    results.update(bench_decision((10, 10_000, 100_000), 50_000))
    passed = {
        "healthy_ratio": results["healthy_ratio"] <= TARGETS["healthy_ratio"],
        "fail_fast_us": results["fail_fast_us"] <= TARGETS["fail_fast_us"],
        "decision_flatness": results["decision_flatness"] <= TARGETS["decision_flatness"],
    }
    if args.json:
        print(json.dumps({"results": results, "targets": TARGETS, "passed": passed}, indent=2))
    else:
        print("| measure | value | target |")
        print("| --- | --- | --- |")
        print(f"| loopback connect+close, unguarded | {results['unguarded_us']:.1f} µs | |")
        print(f"| loopback connect+close, guarded | {results['guarded_us']:.1f} µs | |")
        for key, label in [
            ("healthy_ratio", "guarded / unguarded (median of rounds)"),
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
