"""The demo's logins: an ldap3 bind to slapd, or an embedded loopback login service.

Both open a fresh TCP connection per login with no connect timeout, as the
field's login did. ``ldap_login`` is also the benchmark's and the tests' login.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
from collections.abc import Iterator

from . import slapd

__all__ = ["embedded_login_service", "ldap_login", "service_login", "slapd_usable"]

_SERVICE_REQUEST = b"LOGIN alice alice-secret\n"


def ldap_login(url: str, user: str, password: str, *, receive_timeout: float = 30) -> None:
    """A new ldap3 Server and Connection, then a simple bind; ``PermissionError`` if refused."""
    import ldap3

    conn = ldap3.Connection(
        ldap3.Server(url, get_info=ldap3.NONE),
        user=user,
        password=password,
        receive_timeout=receive_timeout,
    )
    try:
        if not conn.bind():
            raise PermissionError(f"bind refused: {conn.result.get('description')}")
    finally:
        with contextlib.suppress(Exception):
            conn.unbind()


def slapd_usable() -> bool:
    """slapd is installed and ldap3 importable."""
    try:
        import ldap3  # noqa: F401
    except ImportError:
        return False
    return slapd.available()


class _LoginHandler(socketserver.StreamRequestHandler):
    timeout = 10.0

    def handle(self) -> None:
        with contextlib.suppress(OSError):
            line = self.rfile.readline(256)
            self.wfile.write(b"OK\n" if line == _SERVICE_REQUEST else b"DENIED\n")


class _LoginService(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextlib.contextmanager
def embedded_login_service() -> Iterator[str]:
    """A loopback login service answering one line per connection; yields ``host:port``."""
    server = _LoginService(("127.0.0.1", 0), _LoginHandler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"{host!s}:{port}"
    finally:
        server.shutdown()
        thread.join(5.0)
        server.server_close()


def service_login(address: tuple[str, int]) -> None:
    """One login against ``embedded_login_service``; ``PermissionError`` if refused."""
    with socket.create_connection(address) as sock:
        sock.sendall(_SERVICE_REQUEST)
        if sock.makefile("rb").readline(16) != b"OK\n":
            raise PermissionError("login refused")
