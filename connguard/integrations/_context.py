"""State shared between integrations that nest (asyncio above socket, httpx above socket)."""

from __future__ import annotations

from contextvars import ContextVar

__all__ = ["admitted_above"]

# True while an outer integration already admitted this connect and owns its ticket:
# the socket-level wrapper then steps aside, so a recovery trial is not refused by
# its own second admission.
admitted_above: ContextVar[bool] = ContextVar("connguard_admitted_above", default=False)
