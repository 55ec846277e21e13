"""Refused connects to many endpoints: connguard's cost against none, in the same run.

Run: .venv/bin/python benchmarks/bench_refused.py [--json] [--endpoints N] [--rounds R]

Every connect goes to a loopback address (127.1.x.y) where nothing listens, so it
is refused at once. A refusal that fast costs no time, so connguard never opens a
circuit on it (issue 10): what is measured is the bookkeeping of one cheap failure
per connect (admission, the wrapper's exception path, the lock-free cheap-failure
record). Guarded and unguarded blocks are interleaved (see ``_interleave``); the
figure is the ratio of their per-connect medians. Target (issue 14): <= 1.5.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import time

from _interleave import interleaved

TARGET_RATIO = 1.5
_CHUNK = 200  # connects timed together: one sample


def _refused_port() -> int:
    """A port nothing listens on, on any loopback address."""
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        return int(sock.getsockname()[1])


def _addresses(count: int, port: int) -> list[tuple[str, int]]:
    return [(f"127.1.{i // 250}.{i % 250 + 1}", port) for i in range(count)]


def refused_block(addresses: list[tuple[str, int]], passes: int) -> list[float]:
    """Per-connect seconds, one sample per chunk, over ``passes`` sweeps of the endpoints."""
    samples = []
    targets = addresses * passes
    for start in range(0, len(targets), _CHUNK):
        chunk = targets[start : start + _CHUNK]
        began = time.perf_counter()
        for address in chunk:
            sock = socket.socket()
            try:
                sock.connect(address)
            except OSError:
                pass
            finally:
                sock.close()
        samples.append((time.perf_counter() - began) / len(chunk))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", type=int, default=5000)
    parser.add_argument("--passes", type=int, default=4, help="connects per endpoint per block")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    # An application with logging set up: records are made, not printed here.
    logging.getLogger("connguard").addHandler(logging.NullHandler())
    logging.getLogger("connguard").propagate = False
    addresses = _addresses(args.endpoints, _refused_port())
    result = interleaved(lambda: refused_block(addresses, args.passes), args.rounds)
    result |= {
        "endpoints": args.endpoints,
        "connects_per_block": args.endpoints * args.passes,
        "target_ratio": TARGET_RATIO,
        "pass": result["ratio"] <= TARGET_RATIO,
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>20}: {value}")


if __name__ == "__main__":
    main()
