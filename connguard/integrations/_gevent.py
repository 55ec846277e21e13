"""gevent: its socket class gets the same guard as ``socket.socket``, in either order.

``monkey.patch_all()`` replaces ``socket.socket`` with ``gevent._socket3.socket``,
which is not a ``_socket.socket`` subclass. Installed after ``patch_all()``, the
socket integration already wraps that class (it *is* ``socket.socket`` then).
Installed before, the wrapper on the stdlib class is never reached by gevent's
sockets: this hook wraps gevent's class when ``gevent._socket3`` is imported (or
at once if it already is), so the order of the two calls does not matter.

Deadlines on gevent sockets are socket timeouts, enforced by the hub's timer:
no thread waits on a greenlet's connect and nothing blocks the hub. Greenlets
share the connect lane like threads do (its waits use ``threading`` primitives
created per wait, which ``patch_all()`` makes cooperative).
"""

from __future__ import annotations

import socket
from typing import Any

from .._guard import Guard
from ._hooks import when_imported
from ._patch import Patcher
from ._socket import wrap_socket_class

__all__ = ["install"]


def install(guard: Guard) -> Patcher:
    patcher = Patcher()

    def patch(module: Any) -> None:
        cls = getattr(module, "socket", None)
        if cls is None or cls is socket.socket:
            return  # patch_all() ran first: the socket integration wrapped it already
        wrap_socket_class(patcher, guard, cls)

    when_imported(guard, "gevent._socket3", patch)
    return patcher
