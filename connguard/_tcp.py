"""Small TCP facts about a socket, used after a connect times out.

On Linux a blocked connect is in SYN_SENT only once its SYN left the host; a
connect held back by local policy (a security tool pending it, a serialized
host) is still CLOSE. ``shutdown()`` aborts a SYN_SENT connect at once and
returns the socket to the unconnected state, so a timed-out connect no longer
holds a half-open slot (``close()`` from another thread does not abort it).

Every call here goes into a socket object that is the application's, possibly
a subclass with its own ``getsockopt``/``shutdown``: none of them may raise.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

__all__ = [
    "SYN_SENT",
    "TCP_CLOSE",
    "abort_connect",
    "connect_left_host",
    "read_tcp_state",
    "shut_down",
    "tcp_state",
]

_TCP_INFO = getattr(socket, "TCP_INFO", None) if sys.platform == "linux" else None
SYN_SENT = 2
TCP_CLOSE = 7


def read_tcp_state(sock: Any) -> int | None:
    """The kernel's TCP state number, None where TCP_INFO is not available.

    Raises whatever the socket raises (``OSError`` once it is closed); the
    watchdog needs to tell a failing socket from an unknown state.
    """
    if _TCP_INFO is None:
        return None
    state: int = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 1)[0]
    return state


def tcp_state(sock: Any) -> int | None:
    """The kernel's TCP state number, or None when it cannot be read; never raises."""
    try:
        return read_tcp_state(sock)
    except Exception:  # a closed socket, or a subclass with its own getsockopt
        return None


def connect_left_host(sock: Any) -> bool:
    """After a connect timed out: did its SYN leave this host? True when unknown."""
    return tcp_state(sock) != TCP_CLOSE


def shut_down(sock: Any) -> bool:
    """``shutdown(SHUT_RDWR)``; False when the socket raised anything."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except Exception:  # not connected (OSError), or a subclass's own fault
        return False
    return True


def abort_connect(sock: Any) -> None:
    """Abort a connect still in SYN_SENT; never raises."""
    if _TCP_INFO is None or tcp_state(sock) == SYN_SENT:
        shut_down(sock)
