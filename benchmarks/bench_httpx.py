"""What connguard costs an httpx request on the healthy path, guarded vs unguarded.

Two cases against a real HTTP server (uvicorn in a child process, loopback):

- **new connection**: every request opens a new TCP connection (the server
  closes after each response), so each one passes through connguard's httpx,
  socket and admission code;
- **keep-alive**: requests reuse one connection, so connguard is not on the
  path at all (the target is "no measurable cost").

Guarded (``connguard.install()``) and unguarded rounds alternate in one run
(ABBA order, so drift hits both sides alike); the figure is the median over rounds of the
ratio of the two adjacent blocks' median per-request times.
Targets: new connection <= 1.03, keep-alive <= 1.01.

    .venv/bin/python benchmarks/bench_httpx.py [--rounds 60] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

import httpx
from _interleave import interleaved

TARGETS = {"new connection": 1.03, "keep-alive": 1.01}
REQUESTS = {"new connection": 50, "keep-alive": 100}

_SERVER = """
import sys, uvicorn

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="error",
            lifespan="off", ws="none", access_log=False)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_listening(port: int, limit: float = 15.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("benchmark server did not start")


def _time_requests(client: httpx.Client, url: str, count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        client.get(url)
        times.append(time.perf_counter() - started)
    return times


def _round(case: str, url: str) -> list[float]:
    headers = {"Connection": "close"} if case == "new connection" else {}
    with httpx.Client(headers=headers) as client:
        client.get(url)  # warm: imports, first connection, pool
        return _time_requests(client, url, REQUESTS[case])


def _measure(case: str, url: str, rounds: int) -> dict[str, Any]:
    result = interleaved(lambda: _round(case, url), rounds)
    result["target"] = TARGETS[case]
    result["requests_per_side"] = result.pop("per_side")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=60, help="interleaved rounds (default 60)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    rounds = max(2, min(args.rounds, 200))  # bounded

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_listening(port)
        url = f"http://127.0.0.1:{port}/"
        results = {case: _measure(case, url, rounds) for case in TARGETS}
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)

    if args.json:
        print(json.dumps({"python": sys.version.split()[0], "cpus": os.cpu_count(),
                          "results": results}, indent=2))  # fmt: skip
        return 0
    print("| case | unguarded (µs) | guarded (µs) | ratio | target | met |")
    print("| --- | ---: | ---: | ---: | ---: | :---: |")
    for case, r in results.items():
        met = "yes" if r["ratio"] <= r["target"] else "no"
        print(f"| {case} | {r['unguarded_us']} | {r['guarded_us']} | {r['ratio']:.3f} "
              f"| <= {r['target']} | {met} |")  # fmt: skip
    print(f"\n{results['keep-alive']['requests_per_side']} keep-alive and "
          f"{results['new connection']['requests_per_side']} new-connection requests per side, "
          f"{rounds} interleaved rounds; ratio = median of per-round "
          "ratios of medians.")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
