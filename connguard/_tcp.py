"""Small TCP facts about a socket, used after a connect times out.

On Linux a blocked connect is in SYN_SENT only once its SYN left the host; a
connect held back by local policy (a security tool pending it, a serialized
host) is still CLOSE. ``shutdown()`` aborts a SYN_SENT connect at once and
returns the socket to the unconnected state, so a timed-out connect no longer
holds a half-open slot (``close()`` from another thread does not abort it).
"""

from __future__ import annotations

import contextlib
import socket
import sys

__all__ = ["SYN_SENT", "TCP_CLOSE", "abort_connect", "connect_left_host", "tcp_state"]

_TCP_INFO = getattr(socket, "TCP_INFO", None) if sys.platform == "linux" else None
SYN_SENT = 2
TCP_CLOSE = 7


def tcp_state(sock: socket.socket) -> int | None:
    """The kernel's TCP state number, or None where TCP_INFO is not available."""
    if _TCP_INFO is None:
        return None
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 1)[0]
    except OSError:
        return None


def connect_left_host(sock: socket.socket) -> bool:
    """After a connect timed out: did its SYN leave this host? True when unknown."""
    return tcp_state(sock) != TCP_CLOSE


def abort_connect(sock: socket.socket) -> None:
    """Abort a connect still in SYN_SENT; never raises."""
    if tcp_state(sock) == SYN_SENT or _TCP_INFO is None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
