"""Guarded vs unguarded, interleaved in one run: the shape every overhead benchmark shares."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import connguard


def interleaved(block: Callable[[], list[float]], rounds: int) -> dict[str, Any]:
    """Run ``block`` unguarded and guarded, alternating which goes first, ``rounds`` times.

    ``block()`` returns per-operation seconds. The ratio is the median over rounds of
    (guarded median / unguarded median) of adjacent blocks, so drift on a shared,
    noisy machine hits both sides alike.
    """
    samples: dict[bool, list[float]] = {False: [], True: []}
    ratios = []
    for i in range(rounds):
        medians = {}
        for guarded in (False, True) if i % 2 == 0 else (True, False):
            if guarded:
                connguard.install(environ={})
            try:
                times = block()
            finally:
                connguard.uninstall()
            samples[guarded].extend(times)
            medians[guarded] = statistics.median(times)
        ratios.append(medians[True] / medians[False])
    deciles = statistics.quantiles(ratios, n=10, method="inclusive")
    return {
        "unguarded_us": round(statistics.median(samples[False]) * 1e6, 1),
        "guarded_us": round(statistics.median(samples[True]) * 1e6, 1),
        "ratio": round(statistics.median(ratios), 4),
        "ratio_p10": round(deciles[0], 4),
        "ratio_p90": round(deciles[-1], 4),
        "per_side": len(samples[True]),
    }
