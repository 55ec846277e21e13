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


def interleaved_variants(
    block: Callable[[], float],
    variants: dict[str, tuple[Callable[[], None], Callable[[], None]]],
    rounds: int,
) -> dict[str, dict[str, float]]:
    """Run ``block`` under each variant (set up, tear down), rotating the order per round.

    The first variant is the baseline: each other variant's figure is the median over
    rounds of (its value / the baseline's value in the same round), so every row is a
    ratio against a floor measured minutes, not hours, apart.
    """
    names = list(variants)
    values: dict[str, list[float]] = {name: [] for name in names}
    ratios: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        shift = i % len(names)
        this_round = {}
        for name in names[shift:] + names[:shift]:
            set_up, tear_down = variants[name]
            set_up()
            try:
                this_round[name] = block()
            finally:
                tear_down()
            values[name].append(this_round[name])
        for name in names:
            ratios[name].append(this_round[name] / this_round[names[0]])
    return {
        name: {
            "value": statistics.median(values[name]),
            "ratio": statistics.median(ratios[name]),
            "ratio_p10": statistics.quantiles(ratios[name], n=10, method="inclusive")[0],
            "ratio_p90": statistics.quantiles(ratios[name], n=10, method="inclusive")[-1],
        }
        for name in names
    }
