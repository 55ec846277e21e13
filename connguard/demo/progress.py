"""What the demo shows: one live line per row while it runs, then the results table."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import IO, Any

__all__ = ["Progress", "table"]

Rows = Sequence[tuple[str, str]]  # (key, title) per row, in display order
_TITLE = 46  # width of the title column


class Progress:
    """Redraws one line per row on a terminal; prints every few seconds otherwise."""

    def __init__(self, stream: IO[str], seconds: float, rows: Rows) -> None:
        self.stream = stream
        self.seconds = seconds
        self.rows = rows
        self.tty = stream.isatty()
        self.state: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.drawn = False
        self.last_print = 0.0

    def update(self, row: str, fields: dict[str, Any]) -> None:
        """A row's latest tally: ``t``, ``done``, ``waiting``, ``stalled``, ``worst``."""
        with self.lock:
            self.state[row] = fields
            now = time.monotonic()
            if self.tty:
                self._draw()
            elif now - self.last_print >= 4.0:
                self.last_print = now
                self._draw()

    def _line(self, row: str, title: str) -> str:
        f = self.state.get(row)
        if f is None:
            return f"  {title:<{_TITLE}} starting"
        t = min(f.get("t", self.seconds), self.seconds)
        bar = "#" * int(20 * t / self.seconds)
        return (
            f"  {title:<{_TITLE}} [{bar:<20}] {t:4.0f}s  logins {f['done']:3d}"
            f" ({f['waiting']:2d} waiting)  stalled {f['stalled']:3d}  worst {f['worst']:5.1f}s"
        )

    def _draw(self) -> None:
        lines = [self._line(row, title) for row, title in self.rows]
        if self.tty and self.drawn:
            self.stream.write(f"\x1b[{len(lines)}F")  # back to the first row's line
        end = "\x1b[K\n" if self.tty else "\n"
        self.stream.write("".join(line + end for line in lines))
        self.stream.flush()
        self.drawn = True


def table(results: dict[str, dict[str, Any]], seconds: float, rows: Rows) -> str:
    """The results, one line per row: logins, p50, p99, worst, stalled, failed."""
    head = (
        f"{'':<{_TITLE}} {'logins':>6} {'p50':>8} {'p99':>8} {'worst':>8} {'stalled':>9} "
        f"{'failed':>6}"
    )
    lines = [head, "-" * len(head)]
    for row, title in rows:
        r = results.get(row)
        if r is None:
            lines.append(f"{title:<{_TITLE}} (no result: the row failed)")
            continue
        if row == "lane" and not r.get("lane"):
            title = "connguard lane (lane not in this build)"
        worst = f"{r['max_ms'] / 1000:.2f}s"
        if r.get("cut_short") and r["max_ms"] >= 1000 * (seconds - 2):
            worst = ">=" + worst.replace(".00", "")  # still waiting when the row ended
        share = f"{r['stalled']} ({100 * r['stalled'] / max(1, r['count']):.0f}%)"
        lines.append(
            f"{title:<{_TITLE}} {r['count']:>6} {r['p50_ms'] / 1000:>7.2f}s"
            f" {r['p99_ms'] / 1000:>7.2f}s {worst:>8} {share:>9} {r['failed']:>6}"
        )
    return "\n".join(lines)
