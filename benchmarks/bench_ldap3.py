"""What connguard costs an ldap3 login on the healthy path, guarded vs unguarded.

Every login opens a new connection and binds as a user against a real OpenLDAP
server (a throw-away slapd on loopback, started by tests/slapd.py), as the
login path of the field incident did. Two cases:

- **Server**: ``Connection(Server(url), user, password).bind()``: one connect,
  through connguard's ldap3 and socket code;
- **ServerPool**: the same through ``ServerPool([server], active=True)``, which
  adds ldap3's availability probe (``check_availability``: a second connect)
  and the pool search, both wrapped by connguard.

Guarded (``connguard.install()``) and unguarded blocks alternate in one run
(ABBA order, so drift hits both sides alike); the figure is the median over
rounds of the ratio of the two adjacent blocks' median bind times. Target:
<= 1.03 for both cases. Unbinding is not timed.

    .venv/bin/python benchmarks/bench_ldap3.py [--rounds 40] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from typing import Any

with warnings.catch_warnings():  # pyasn1 deprecations raised while ldap3 imports
    warnings.simplefilter("ignore", DeprecationWarning)
    import ldap3

from _interleave import interleaved

from connguard.demo.slapd import SlapdServer, running_slapd

TARGET = 1.03
BINDS = 40  # per block


def _servers(slapd: SlapdServer, case: str) -> Any:
    server = ldap3.Server(slapd.url, connect_timeout=5)
    if case == "ServerPool":
        return ldap3.ServerPool([server], ldap3.FIRST, active=True, exhaust=False)
    return server


def _block(slapd: SlapdServer, case: str) -> list[float]:
    target = _servers(slapd, case)
    times = []
    for i in range(BINDS + 1):
        started = time.perf_counter()
        conn = ldap3.Connection(target, slapd.user_dn, slapd.user_password)
        if not conn.bind():
            raise RuntimeError(f"bind failed: {conn.result}")
        elapsed = time.perf_counter() - started
        conn.unbind()
        if i:  # the first bind of a block warms the Server's address cache
            times.append(elapsed)
    return times


def _measure(slapd: SlapdServer, case: str, rounds: int) -> dict[str, Any]:
    result = interleaved(lambda: _block(slapd, case), rounds)
    result["target"] = TARGET
    result["binds_per_side"] = result.pop("per_side")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=40, help="interleaved rounds (default 40)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    rounds = max(2, min(args.rounds, 200))  # bounded

    with running_slapd() as slapd:
        results = {case: _measure(slapd, case, rounds) for case in ("Server", "ServerPool")}

    if args.json:
        print(json.dumps({"python": sys.version.split()[0], "cpus": os.cpu_count(),
                          "ldap3": ldap3.__version__, "results": results}, indent=2))  # fmt: skip
        return 0
    print("| case | unguarded (µs) | guarded (µs) | ratio | ratio p10-p90 | target | met |")
    print("| --- | ---: | ---: | ---: | :---: | ---: | :---: |")
    for case, r in results.items():
        met = "yes" if r["ratio"] <= r["target"] else "no"
        spread = f"{r['ratio_p10']:.3f}-{r['ratio_p90']:.3f}"
        print(f"| {case} | {r['unguarded_us']} | {r['guarded_us']} | {r['ratio']:.3f} "
              f"| {spread} | <= {r['target']} | {met} |")  # fmt: skip
    print(f"\n{results['Server']['binds_per_side']} new-connection binds per side and case, "
          f"{rounds} interleaved rounds; ratio = median of per-round ratios of "
          "medians.")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
