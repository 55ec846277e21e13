"""Integrations: each module patches one library and talks only to the guard.

Every module has ``install(guard) -> Patcher``; the returned patcher undoes it.
Libraries that may be imported after ``install()`` are hooked with wrapt's
post-import hooks, which check that the guard is still installed.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from .._guard import Guard
from ._patch import Patcher

__all__ = ["FOLLOWERS", "MODULES", "install_integrations"]

# name in CONNGUARD_INTEGRATIONS -> module implementing it
MODULES: dict[str, str] = {
    "socket": "connguard.integrations._socket",
    "asyncio": "connguard.integrations._asyncio",
    "httpx": "connguard.integrations._httpx",
    "ldap3": "connguard.integrations._ldap3",
}
# Installed whenever the integration they follow is: gevent's socket class is
# ``socket.socket`` once gevent has monkey-patched, so "socket" covers both.
FOLLOWERS: dict[str, tuple[str, str]] = {"gevent": ("socket", "connguard.integrations._gevent")}


def install_integrations(guard: Guard, names: tuple[str, ...]) -> list[Patcher]:
    """Install the named integrations (in a fixed order: socket first), then followers."""
    chosen = [module for name, module in MODULES.items() if name in names]
    chosen += [module for leader, module in FOLLOWERS.values() if leader in names]
    patchers = []
    for module_name in chosen:
        install: Callable[[Guard], Patcher] = importlib.import_module(module_name).install
        patchers.append(install(guard))
    return patchers
