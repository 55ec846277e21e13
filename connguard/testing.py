"""Helpers for testing code that connects to dead endpoints, on loopback only.

Import this module from your own test suite. It does not depend on the rest of
connguard and works whether or not :func:`connguard.install` was called.

* :func:`blackhole` — a loopback ``host:port`` whose SYNs are never answered, so
  a client connect sits in ``SYN_SENT`` until its timeout, like a firewalled or
  powered-off server. No root needed (Linux).
* :func:`serialized_host` — emulates a host whose security tool lets at most
  ``slots`` connects of the process be in ``SYN_SENT`` at once; every other new
  TCP connect waits behind them (threads, ``socket.create_connection``, httpx,
  ldap3 and asyncio's selector loop alike).
* :func:`tcp_server`, :func:`http_server`, :func:`udp_echo_server` — small live
  servers in threads, stopped deterministically on exit.

Example::

    from connguard.testing import blackhole, serialized_host, tcp_server

    with serialized_host(slots=1) as host, blackhole() as dead, tcp_server() as live:
        ...  # a connect to dead.address now delays a connect to live.address

Everything here is Linux-specific where it reads ``TCP_INFO``
(:func:`blackhole`'s verification and :func:`serialized_host`).
"""

from __future__ import annotations

import _socket
import asyncio
import asyncio.selector_events
import contextlib
import errno
import http.server
import random
import select
import socket
import socketserver
import sys
import threading
import time
import weakref
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Literal, TypeGuard

import wrapt

__all__ = [
    "SYN_SENT",
    "Blackhole",
    "HTTPServer",
    "SerializedHost",
    "TCPServer",
    "UDPEchoServer",
    "blackhole",
    "http_server",
    "reachable",
    "serialized_host",
    "tcp_state",
    "tcp_server",
    "udp_echo_server",
    "unreserved_port",
]

#: ``tcpi_state`` value of a socket whose SYN is unanswered (Linux ``TCP_SYN_SENT``).
SYN_SENT = 2
_ESTABLISHED = 1

# Bounds on our own loops, so no helper can spin forever.
_MAX_FILLERS = 64
_FILLER_WAIT = 0.2
_POLL = 0.001
_RECHECK = 0.01  # blocking waiters' re-check when no connect call frees the slot
_STOP_JOIN = 5.0


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def unreserved_port(host: str = "127.0.0.1") -> int:
    """A free port on ``host`` below the ephemeral range, where nothing listens.

    A connect to it is refused at once, and no client can ever self-connect to it
    (the kernel never hands it out as a source port): the right port for a
    wait-for-port or restart test.
    """
    for _ in range(200):
        port = random.randrange(20000, 32000)
        with socket.socket(_family(host)) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port on {host} in 20000..32000")


def reachable(address: tuple[str, int], timeout: float = 0.05) -> bool:
    """Does ``address`` accept a TCP connect within ``timeout`` s? Bypasses every wrapper.

    The connect goes straight to ``_socket.socket.connect_ex`` on a non-blocking
    socket, so neither connguard nor another instrumenter sees it: a test's own
    eyes on a peer.
    """
    sock = socket.socket(_family(address[0]), socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        err = _socket.socket.connect_ex(sock, address)
        if err == errno.EINPROGRESS:
            _, writable, _ = select.select([], [sock], [], timeout)
            if not writable:
                return False
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        return err == 0
    finally:
        sock.close()


def tcp_state(sock: socket.socket) -> int | None:
    """Return the kernel TCP state of ``sock`` (``tcpi_state``), or ``None``.

    ``None`` means the state cannot be read: the socket is closed, is not TCP,
    or the platform has no ``TCP_INFO``. Compare with :data:`SYN_SENT`.
    """
    opt = getattr(socket, "TCP_INFO", None)
    if opt is None or sock.fileno() == -1:
        return None
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, opt, 1)[0]
    except OSError:
        return None


# --------------------------------------------------------------------------- #
# blackhole
# --------------------------------------------------------------------------- #


class Blackhole:
    """A loopback endpoint that never answers a SYN; see :func:`blackhole`."""

    __slots__ = ("host", "port")

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)``, ready for ``socket.connect``."""
        return (self.host, self.port)

    def __repr__(self) -> str:
        return f"Blackhole({self.host!r}, {self.port})"


def _filler_connects(sock: socket.socket, address: tuple[str, int]) -> bool:
    """Connect a non-blocking filler; True if the handshake completed."""
    # The C-level method bypasses any wrapper (serialized_host, connguard):
    # building the blackhole must neither wait for a slot nor be recorded.
    # gevent's socket class wraps the real one in ._sock.
    err = _socket.socket.connect_ex(getattr(sock, "_sock", sock), address)
    if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
        raise OSError(err, f"blackhole filler connect failed: {errno.errorcode.get(err)}")
    if err != 0:
        _, writable, _ = select.select([], [sock], [], _FILLER_WAIT)
        if not writable:
            return False
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
            return False
    # Writable can still mean "not yet": trust only the kernel's state.
    return tcp_state(sock) == _ESTABLISHED


@contextlib.contextmanager
def blackhole(host: str = "127.0.0.1") -> Iterator[Blackhole]:
    """Yield a loopback endpoint whose SYNs are never answered.

    The listener has a backlog of 0 and is never ``accept()``-ed; filler
    connections fill its accept queue (Linux admits exactly one), after which
    the kernel drops every SYN, so clients sit in ``SYN_SENT`` until their own
    timeout. Use literal addresses (``"127.0.0.1"``, ``"::1"``), not
    ``localhost``. Close the client sockets you point at it: a timed-out
    connect stays in ``SYN_SENT`` until its socket is closed.
    """
    family = _family(host)
    listener = socket.socket(family, socket.SOCK_STREAM)
    fillers: list[socket.socket] = []
    try:
        listener.bind((host, 0))
        listener.listen(0)
        port: int = listener.getsockname()[1]
        for _ in range(_MAX_FILLERS):
            filler = socket.socket(family, socket.SOCK_STREAM)
            filler.setblocking(False)
            if _filler_connects(filler, (host, port)):
                fillers.append(filler)
                continue
            # This one sits in SYN_SENT: the queue is full. Drop it so it
            # holds no slot of an emulated serialized host.
            filler.close()
            break
        else:
            raise RuntimeError(f"blackhole: accept queue of {host}:{port} never filled")
        yield Blackhole(host, port)
    finally:
        listener.close()
        for filler in fillers:
            filler.close()


# --------------------------------------------------------------------------- #
# serialized_host
# --------------------------------------------------------------------------- #

_SyncWrapped = Callable[..., Any]
_AsyncWrapped = Callable[..., Coroutine[Any, Any, Any]]


def _is_tcp(sock: object) -> TypeGuard[socket.socket]:
    return (
        isinstance(sock, socket.socket)
        and sock.family in (socket.AF_INET, socket.AF_INET6)
        and sock.type == socket.SOCK_STREAM
    )


class SerializedHost:
    """State and statistics of :func:`serialized_host`.

    Attributes (read them after or during the block):

    * ``slots`` — how many connects may be in ``SYN_SENT`` at once.
    * ``connects`` — TCP connects admitted.
    * ``waits`` — how many of them had to wait for a slot.
    * ``wait_times`` — the duration of each of those waits, in seconds.
    * ``max_waited`` — the longest wait, in seconds (0.0 if none).
    """

    def __init__(self, slots: int, max_wait: float) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.slots = slots
        self.max_wait = max_wait
        self.connects = 0
        self.waits = 0
        self.wait_times: list[float] = []
        self.max_waited = 0.0
        self._lock = threading.Lock()
        # Blocking waiters sleep here instead of spinning: with a hundred threads
        # queued behind a dead connect, 1 ms polling saturated the GIL and the
        # queue drained far slower than a real host's would.
        self._freed = threading.Condition(self._lock)
        # Sockets whose connect we admitted; weak so a dropped socket (closed
        # by the garbage collector) frees its slot like a closed one.
        self._tracked: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        # Sockets admitted whose connect call has not returned yet: they hold
        # a slot whatever their state (the SYN may not be out yet).
        self._starting: set[socket.socket] = set()
        self._active = True

    def in_flight(self) -> int:
        """How many slots are taken right now."""
        with self._lock:
            return self._occupied()

    def _occupied(self) -> int:
        busy = len(self._starting)
        for sock in list(self._tracked):
            if sock in self._starting:
                continue
            if tcp_state(sock) == SYN_SENT:
                busy += 1
            else:
                # Past SYN_SENT (or closed): it never takes a slot again
                # unless connect is called on it anew.
                self._tracked.discard(sock)
        return busy

    def _try_admit(self, sock: socket.socket, starting: bool) -> bool:
        with self._lock:
            return self._admit_locked(sock, starting)

    def _admit_locked(self, sock: socket.socket, starting: bool) -> bool:
        if self._occupied() >= self.slots:
            return False
        self._tracked.add(sock)
        if starting:
            self._starting.add(sock)
        self.connects += 1
        return True

    def _done(self, sock: socket.socket) -> None:
        with self._lock:
            self._starting.discard(sock)
            self._freed.notify()  # the next blocking waiter tries at once

    def _record_wait(self, waited: float) -> None:
        with self._lock:
            self.waits += 1
            self.wait_times.append(waited)
            self.max_waited = max(self.max_waited, waited)

    def _wait_sync(self, sock: socket.socket, timeout: float | None) -> float | None:
        """Block until a slot is free; return the caller's remaining timeout.

        Raises TimeoutError when the caller's timeout (or ``max_wait``) ends
        first, with the message CPython uses for a connect timeout.
        """
        start = time.monotonic()
        limit = self.max_wait if timeout is None else min(timeout, self.max_wait)
        waited = False
        admitted = True
        with self._freed:
            while not self._admit_locked(sock, starting=True):
                waited = True
                left = limit - (time.monotonic() - start)
                if left <= 0:
                    admitted = False
                    break
                # Woken by a connect that returned; the timeout catches slots freed
                # without a call (a SYN_SENT socket closed, a non-blocking connect).
                self._freed.wait(min(left, _RECHECK))
        if not admitted:
            self._record_wait(time.monotonic() - start)
            raise TimeoutError("timed out")
        elapsed = time.monotonic() - start
        if waited:
            self._record_wait(elapsed)
        return None if timeout is None else timeout - elapsed

    def _sync_call(
        self, wrapped: _SyncWrapped, sock: socket.socket, args: tuple[Any, ...], ex: bool
    ) -> Any:
        timeout = sock.gettimeout()
        if timeout == 0.0:
            # Non-blocking: never block here. Either asyncio's sock_connect
            # wrapper already holds the slot for this socket, or a raw
            # non-blocking caller gets through at once but is tracked.
            with self._lock:
                reserved = sock in self._starting
            if not reserved:
                with self._lock:
                    self._tracked.add(sock)
                    self.connects += 1
            return wrapped(*args)
        try:
            remaining = self._wait_sync(sock, timeout)
        except TimeoutError:
            if ex:
                return errno.EAGAIN  # what connect_ex returns on its own timeout
            raise
        try:
            if remaining is None:
                return wrapped(*args)
            if remaining <= 0:
                if ex:
                    return errno.EAGAIN
                raise TimeoutError("timed out")
            # The real connect gets only what is left of the caller's timeout.
            sock.settimeout(remaining)
            try:
                return wrapped(*args)
            finally:
                sock.settimeout(timeout)
        finally:
            self._done(sock)

    async def _async_call(
        self,
        wrapped: _AsyncWrapped,
        sock: socket.socket,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        start = time.monotonic()
        waited = False
        try:
            while not self._try_admit(sock, starting=True):
                waited = True
                if time.monotonic() - start >= self.max_wait:
                    raise TimeoutError("timed out")
                # Sleep, not block: the event loop keeps running meanwhile.
                await asyncio.sleep(_POLL)
        finally:
            if waited:
                self._record_wait(time.monotonic() - start)
        try:
            return await wrapped(*args, **kwargs)
        finally:
            self._done(sock)


class _Patch:
    """One wrapt patch that restores only what it installed."""

    def __init__(self, owner: type[Any], name: str, wrapper: Callable[..., Any]) -> None:
        self.owner = owner
        self.name = name
        self.had_own = name in owner.__dict__
        self.original = owner.__dict__.get(name)
        self.handle: Any = wrapt.wrap_object(owner, name, wrapt.FunctionWrapper, (wrapper,), {})

    def restore(self) -> bool:
        """Undo the patch if ours is still the outermost one; True if undone."""
        if self.owner.__dict__.get(self.name) is not self.handle:
            return False
        if self.had_own:
            setattr(self.owner, self.name, self.original)
        else:
            # Inherited from _socket.socket: delete the shadow, don't re-set.
            delattr(self.owner, self.name)
        return True


@contextlib.contextmanager
def serialized_host(slots: int = 1, *, max_wait: float = 300.0) -> Iterator[SerializedHost]:
    """Emulate a host that lets at most ``slots`` connects be in SYN_SENT at once.

    Inside the block a TCP connect (IPv4 or IPv6) of this process does not
    start while ``slots`` sockets whose connect it admitted are still in
    ``SYN_SENT``; it waits, polling ``TCP_INFO`` every millisecond. This is the
    rule of the security tool in connguard's field case, with ``slots=1``.

    * Blocking sockets wait inside ``connect``/``connect_ex``. The caller's own
      socket timeout covers the wait: if no slot frees in time, ``connect``
      raises ``TimeoutError("timed out")`` (``connect_ex`` returns ``EAGAIN``,
      as it does on its own timeout); otherwise the real connect gets the
      remaining time. Sockets without a timeout wait at most ``max_wait``.
    * asyncio's selector loop waits in ``sock_connect`` with ``asyncio.sleep``,
      so the event loop keeps running; cancellation and ``asyncio.timeout``
      work as usual.
    * A raw non-blocking ``connect`` outside asyncio is never delayed, but it
      takes a slot while its SYN is unanswered.
    * C-level connects (extension modules, uvloop) bypass the emulator.

    Order matters: enter this **before** ``connguard.install()`` so that
    connguard's wrappers sit on top of the emulator, and call
    ``connguard.uninstall()`` before the block ends. If something else is still
    wrapped on top at exit, the emulator is switched off instead of removed.
    """
    if getattr(socket, "TCP_INFO", None) is None:
        raise NotImplementedError("serialized_host needs TCP_INFO (Linux)")
    state = SerializedHost(slots, max_wait)

    def sync_wrapper(ex: bool) -> Callable[..., Any]:
        def wrapper(
            wrapped: _SyncWrapped, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            if not state._active or kwargs or not _is_tcp(instance):
                return wrapped(*args, **kwargs)
            return state._sync_call(wrapped, instance, args, ex)

        return wrapper

    async def async_wrapper(
        wrapped: _AsyncWrapped, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        sock = args[0] if args else kwargs.get("sock")
        if not state._active or not _is_tcp(sock):
            return await wrapped(*args, **kwargs)
        return await state._async_call(wrapped, sock, args, kwargs)

    patches: list[_Patch] = []
    try:
        patches.append(_Patch(socket.socket, "connect", sync_wrapper(ex=False)))
        patches.append(_Patch(socket.socket, "connect_ex", sync_wrapper(ex=True)))
        patches.append(
            _Patch(asyncio.selector_events.BaseSelectorEventLoop, "sock_connect", async_wrapper)
        )
        yield state
    finally:
        state._active = False
        for patch in reversed(patches):
            patch.restore()


# --------------------------------------------------------------------------- #
# live servers
# --------------------------------------------------------------------------- #


class TCPServer:
    """A live TCP server in a thread; see :func:`tcp_server`."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        #: connections accepted so far (a connect completes in the kernel
        #: slightly before it is accepted; poll briefly if you need it exact).
        self.accepted = 0

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)``, ready for ``socket.connect``."""
        return (self.host, self.port)


def _echo(conn: socket.socket, stop: threading.Event) -> None:
    with conn:
        conn.settimeout(0.05)
        while not stop.is_set():
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            try:
                conn.sendall(data)
            except OSError:
                return


@contextlib.contextmanager
def tcp_server(
    host: str = "127.0.0.1", *, mode: Literal["close", "echo"] = "close"
) -> Iterator[TCPServer]:
    """Yield a TCP server on ``host`` (an ephemeral port) served by a thread.

    ``mode="close"`` accepts and closes each connection at once;
    ``mode="echo"`` echoes bytes back until the client closes. ``.accepted``
    counts accepted connections. Threads and sockets are closed on exit.
    """
    listener = socket.socket(_family(host), socket.SOCK_STREAM)
    stop = threading.Event()
    workers: list[threading.Thread] = []
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, 0))
        listener.listen(128)
        server = TCPServer(host, listener.getsockname()[1])

        def serve() -> None:
            while not stop.is_set():
                ready, _, _ = select.select([listener], [], [], 0.05)
                if not ready:
                    continue
                try:
                    conn, _ = listener.accept()
                except OSError:
                    continue
                server.accepted += 1
                if mode == "echo":
                    worker = threading.Thread(target=_echo, args=(conn, stop), daemon=True)
                    workers.append(worker)
                    worker.start()
                else:
                    conn.close()

        acceptor = threading.Thread(target=serve, name=f"tcp_server:{server.port}", daemon=True)
        acceptor.start()
        try:
            yield server
        finally:
            stop.set()
            acceptor.join(_STOP_JOIN)
            for worker in workers:
                worker.join(_STOP_JOIN)
    finally:
        stop.set()
        listener.close()


class HTTPServer:
    """A live HTTP/1.1 server in a thread; see :func:`http_server`."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        #: requests answered so far.
        self.requests = 0
        #: TCP connections accepted so far (keep-alive reuses one).
        self.connections = 0

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)``, ready for ``socket.connect``."""
        return (self.host, self.port)

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8080/``."""
        return f"http://{_url_host(self.host)}:{self.port}/"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like a real API server
    timeout = 30.0  # an idle keep-alive connection can't pin a thread forever
    server: _ThreadingServer

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = self.server.body
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.server.stats.requests += 1

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests read results, not access logs


class _ThreadingServer(http.server.ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True  # server_close() joins handler threads

    def __init__(self, host: str, body: bytes) -> None:
        self.address_family = _family(host)
        self.body = body
        self.stats = HTTPServer(host, 0)
        self.open_conns: set[socket.socket] = set()
        self.conns_lock = threading.Lock()
        super().__init__((host, 0), _Handler)
        self.stats.port = self.server_address[1]

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(): a DNS lookup we skip.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.conns_lock:
            self.open_conns.add(request)
            self.stats.connections += 1
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.conns_lock:
            self.open_conns.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that resets a keep-alive connection is normal here, not news.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def wake_handlers(self) -> None:
        # Handler threads block reading the next keep-alive request; a
        # shutdown makes that read return so server_close() can join them.
        with self.conns_lock:
            conns = list(self.open_conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def http_server(host: str = "127.0.0.1", *, body: bytes = b"ok") -> Iterator[HTTPServer]:
    """Yield a real HTTP/1.1 server (keep-alive) answering 200 ``body`` to any request.

    It runs ``http.server.ThreadingHTTPServer`` in a thread on an ephemeral
    port, logs nothing, and is shut down, closed and joined on exit
    (open keep-alive connections are closed too).
    """
    server = _ThreadingServer(host, body)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="http_server", daemon=True
    )
    thread.start()
    try:
        yield server.stats
    finally:
        server.shutdown()
        thread.join(_STOP_JOIN)
        server.wake_handlers()
        server.server_close()


class UDPEchoServer:
    """A UDP echo server in a thread; see :func:`udp_echo_server`."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        #: datagrams received (and echoed) so far.
        self.received = 0

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)``, ready for ``socket.sendto``."""
        return (self.host, self.port)


@contextlib.contextmanager
def udp_echo_server(host: str = "127.0.0.1", port: int = 0) -> Iterator[UDPEchoServer]:
    """Yield a UDP server that sends every datagram back to its sender.

    Useful to test UDP echo pre-checks. ``port=0`` picks a free port.
    """
    sock = socket.socket(_family(host), socket.SOCK_DGRAM)
    stop = threading.Event()
    try:
        sock.bind((host, port))
        server = UDPEchoServer(host, sock.getsockname()[1])
        sock.settimeout(0.05)

        def serve() -> None:
            while not stop.is_set():
                try:
                    data, peer = sock.recvfrom(65535)
                except TimeoutError:
                    continue
                except OSError:
                    return
                server.received += 1
                with contextlib.suppress(OSError):
                    sock.sendto(data, peer)

        thread = threading.Thread(target=serve, name=f"udp_echo:{server.port}", daemon=True)
        thread.start()
        try:
            yield server
        finally:
            stop.set()
            thread.join(_STOP_JOIN)
    finally:
        stop.set()
        sock.close()
