"""httpx integration and connguard.httpx transports, against uvicorn and loopback blackholes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpcore
import httpx
import pytest
import uvicorn
import wrapt
from _helpers import free_port

import connguard
from connguard import Config, ConnectDeadlineExceeded, EndpointUnavailable
from connguard.httpx import AsyncGuardedTransport, GuardedTransport
from connguard.testing import blackhole

# These tests use refused loopback ports as dead endpoints (see conftest).
pytestmark = pytest.mark.usefixtures("every_failure_counts")

DEADLINE = 0.5  # connect budget in these tests (the default is 2 s)
FAST = 0.1  # generous bound for "at once" on a noisy 2-core machine
SLOW = DEADLINE + 1.5  # generous upper bound for "ended at the deadline"
DUAL_NAME = "dual.connguard.test"
CONFIG = Config(connect_timeout=DEADLINE, min_connect_timeout=DEADLINE)


# -- a real HTTP server ------------------------------------------------------------------


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-app", b"1")]})
    await send({"type": "http.response.body", "body": b"ok"})


@contextlib.contextmanager
def uvicorn_server(host: str = "127.0.0.1", port: int = 0) -> Iterator[int]:
    """Run uvicorn with a tiny ASGI app in a thread; yield its port, stop it on exit."""
    config = uvicorn.Config(
        _app, host=host, port=port, loop="asyncio", http="h11", ws="none",
        lifespan="off", log_level="error",
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive(), "uvicorn exited"
            assert time.monotonic() < deadline, "uvicorn did not start in time"
            time.sleep(0.01)
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def live() -> Iterator[str]:
    """Base URL of a uvicorn server on 127.0.0.1."""
    with uvicorn_server() as port:
        yield f"http://127.0.0.1:{port}/"


@pytest.fixture
def dual_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resolve DUAL_NAME to 127.0.0.2 then 127.0.0.3 without editing /etc/hosts.

    Only name resolution is replaced (sync and anyio both call
    socket.getaddrinfo); the connects themselves are real.
    """
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in (DUAL_NAME, DUAL_NAME.encode()):  # anyio passes IDNA-encoded bytes
            return [
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port)))
                for address in ("127.0.0.2", "127.0.0.3")
            ]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


# -- helpers -------------------------------------------------------------------------------


def _install(**overrides: Any) -> None:
    settings: dict[str, Any] = {"connect_timeout": DEADLINE, "min_connect_timeout": DEADLINE}
    settings.update(overrides)
    assert connguard.install(environ={}, **settings)


def _status(endpoint: str) -> dict[str, Any]:
    (record,) = [r for r in connguard.status() if r["endpoint"] == endpoint]
    return record


def _chain(exc: BaseException) -> list[BaseException]:
    """exc and its __cause__ chain."""
    chain = [exc]
    while chain[-1].__cause__ is not None and len(chain) < 10:
        chain.append(chain[-1].__cause__)
    return chain


def _get_error(client: httpx.Client, url: str) -> tuple[httpx.HTTPError, float]:
    started = time.monotonic()
    with pytest.raises(httpx.HTTPError) as info:
        client.get(url)
    return info.value, time.monotonic() - started


async def _aget_error(client: httpx.AsyncClient, url: str) -> tuple[httpx.HTTPError, float]:
    started = time.monotonic()
    with pytest.raises(httpx.HTTPError) as info:
        await client.get(url)
    return info.value, time.monotonic() - started


def _assert_deadline_then_fast(
    first: tuple[httpx.HTTPError, float], second: tuple[httpx.HTTPError, float]
) -> None:
    (timeout_exc, took), (fast_exc, fast_took) = first, second
    assert isinstance(timeout_exc, httpx.ConnectTimeout)
    assert any(isinstance(e, ConnectDeadlineExceeded) for e in _chain(timeout_exc))
    assert took < SLOW
    # A timed-out endpoint fails fast as a timeout, still from an EndpointUnavailable.
    assert isinstance(fast_exc, httpx.ConnectTimeout)
    assert any(isinstance(e, EndpointUnavailable) for e in _chain(fast_exc))
    assert fast_took < FAST


# -- install(): sync and async ---------------------------------------------------------------


def test_sync_dead_endpoint_bounded_then_fails_fast() -> None:
    """With no connect timeout a dead endpoint ends at the deadline, then fails at once."""
    _install()
    with blackhole() as dead, httpx.Client(timeout=None) as client:
        url = f"http://127.0.0.1:{dead.port}/"
        _assert_deadline_then_fast(_get_error(client, url), _get_error(client, url))
    assert _status(f"127.0.0.1:{dead.port}")["state"] == "open"


def test_async_dead_endpoint_bounded_then_fails_fast() -> None:
    """The async client gets the same deadline and fast httpx.ConnectError."""
    _install()

    async def main(url: str) -> None:
        async with httpx.AsyncClient(timeout=None) as client:
            _assert_deadline_then_fast(
                await _aget_error(client, url), await _aget_error(client, url)
            )

    with blackhole() as dead:
        asyncio.run(main(f"http://127.0.0.1:{dead.port}/"))


def test_longer_timeout_is_bounded_and_clients_built_before_install_are_covered() -> None:
    """A client built before install() with a 30 s timeout is bounded by the deadline."""
    with httpx.Client(timeout=30) as client, blackhole() as dead:
        _install()
        exc, took = _get_error(client, f"http://127.0.0.1:{dead.port}/")
    assert isinstance(exc, httpx.ConnectTimeout)
    assert took < SLOW


def test_shorter_timeout_of_the_caller_wins() -> None:
    """A caller's connect timeout below the deadline is kept, and the error stays httpx's own."""
    _install(connect_timeout=3.0, min_connect_timeout=1.5)
    with blackhole() as dead, httpx.Client(timeout=0.2) as client:
        exc, took = _get_error(client, f"http://127.0.0.1:{dead.port}/")
    assert isinstance(exc, httpx.ConnectTimeout)
    assert not any(isinstance(e, ConnectDeadlineExceeded) for e in _chain(exc))
    assert took < 1.0


def test_keep_alive_requests_do_not_reach_the_guard(live: str) -> None:
    """Only new connections are admitted: five requests on one connection count one connect."""
    _install()
    with httpx.Client() as client:
        for _ in range(5):
            assert client.get(live).text == "ok"
    port = httpx.URL(live).port
    assert _status(f"127.0.0.1:{port}")["successes"] == 1


def test_tls_failure_is_not_a_dead_endpoint(live: str) -> None:
    """A TLS handshake failure raises httpx.ConnectError but never opens the circuit."""
    _install(failure_threshold=1)
    port = httpx.URL(live).port
    with httpx.Client(verify=False) as client:
        for _ in range(3):
            exc, _ = _get_error(client, f"https://127.0.0.1:{port}/")
            assert isinstance(exc, httpx.ConnectError)
            assert not any(isinstance(e, EndpointUnavailable) for e in _chain(exc))
    record = _status(f"127.0.0.1:{port}")
    assert record["state"] == "closed"
    assert record["failures_total"] == 0
    assert record["successes"] == 3  # the TCP connects themselves succeeded


def test_with_a_proxy_the_proxy_endpoint_is_guarded() -> None:
    """Through a dead proxy, the proxy's host:port opens and later requests fail at once."""
    _install()
    with blackhole() as proxy, httpx.Client(proxy=f"http://127.0.0.1:{proxy.port}") as client:
        url = "http://127.0.0.1:9/never-reached"
        _assert_deadline_then_fast(_get_error(client, url), _get_error(client, url))
    assert _status(f"127.0.0.1:{proxy.port}")["state"] == "open"
    assert not [r for r in connguard.status() if r["endpoint"] == "127.0.0.1:9"]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_recovery_trial_goes_through_both_levels(host: str) -> None:
    """After a refusal opens the circuit, one trial reconnects: no double admission."""
    _install(open_seconds=0.2, max_open_seconds=0.2)
    port = free_port()
    url = f"http://{host}:{port}/"
    with httpx.Client() as client:
        exc, _ = _get_error(client, url)
        assert not any(isinstance(e, EndpointUnavailable) for e in _chain(exc))
        exc, _ = _get_error(client, url)
        assert any(isinstance(e, EndpointUnavailable) for e in _chain(exc))
        with uvicorn_server(port=port):
            time.sleep(0.3)  # past retry_at (0.2 s, at most +20 % jitter)
            assert client.get(url).text == "ok"

            async def again() -> str:
                async with httpx.AsyncClient() as aclient:
                    return (await aclient.get(url)).text

            assert asyncio.run(again()) == "ok"
    assert _status(f"{host}:{port}")["state"] == "closed"
    assert _status(f"127.0.0.1:{port}")["state"] == "closed"


@pytest.mark.usefixtures("dual_name")
def test_dead_first_address_is_skipped_sync_then_async() -> None:
    """A name on 127.0.0.2 (dead) and .3 (live) pays the deadline once, then connects at once."""
    _install()
    with blackhole("127.0.0.2") as dead, uvicorn_server("127.0.0.3", dead.port):
        url = f"http://{DUAL_NAME}:{dead.port}/"
        timings = []
        for _ in range(2):
            with httpx.Client(timeout=None) as client:
                started = time.monotonic()
                assert client.get(url).text == "ok"
                timings.append(time.monotonic() - started)

        async def fetch() -> float:
            async with httpx.AsyncClient(timeout=None) as client:
                started = time.monotonic()
                assert (await client.get(url)).text == "ok"
                return time.monotonic() - started

        async_took = asyncio.run(fetch())
    assert DEADLINE * 0.8 < timings[0] < SLOW
    assert timings[1] < FAST
    assert async_took < FAST
    assert _status(f"127.0.0.2:{dead.port}")["state"] == "open"
    assert _status(f"{DUAL_NAME}:{dead.port}")["state"] == "closed"


@pytest.mark.usefixtures("dual_name")
def test_async_first_contact_with_dead_first_address_is_not_delayed_to_the_deadline() -> None:
    """anyio's happy eyeballs reaches the live second address well before the deadline."""
    _install(connect_timeout=3.0, min_connect_timeout=1.5)

    async def fetch(url: str) -> float:
        async with httpx.AsyncClient(timeout=None) as client:
            started = time.monotonic()
            assert (await client.get(url)).text == "ok"
            return time.monotonic() - started

    with blackhole("127.0.0.2") as dead, uvicorn_server("127.0.0.3", dead.port):
        took = asyncio.run(fetch(f"http://{DUAL_NAME}:{dead.port}/"))
    assert took < 1.0
    # The losing attempt was cancelled, which is no evidence against 127.0.0.2.
    assert _status(f"127.0.0.2:{dead.port}")["failures_total"] == 0


def test_uninstall_restores_the_backends(live: str) -> None:
    """uninstall() puts httpcore's own connect_tcp back on every patched backend."""
    from httpcore._backends.anyio import AnyIOBackend
    from httpcore._backends.sync import SyncBackend

    originals = [vars(cls)["connect_tcp"] for cls in (SyncBackend, AnyIOBackend)]
    _install()
    for cls in (SyncBackend, AnyIOBackend):
        assert isinstance(vars(cls)["connect_tcp"], wrapt.FunctionWrapper)
    connguard.uninstall()
    assert [vars(cls)["connect_tcp"] for cls in (SyncBackend, AnyIOBackend)] == originals
    assert httpx.get(live).text == "ok"


_IMPORT_ORDER = """
import asyncio, json, sys, time
order, live, dead_sync, dead_async = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]

async def warm():
    import httpx
    async with httpx.AsyncClient() as c:
        await c.get(live)

if order == "httpx-first":
    import httpx
    httpx.get(live)  # imports httpcore's sync backend
    asyncio.run(warm())  # and the anyio one
    assert "httpcore._backends.sync" in sys.modules
import connguard
assert "httpx" not in sys.modules or order == "httpx-first"
connguard.install(environ={}, connect_timeout=0.5, min_connect_timeout=0.5)
import httpx

def names(exc):
    out = []
    while exc is not None and len(out) < 10:
        out.append(type(exc).__name__)
        exc = exc.__cause__
    return out

def attempt(client, url):
    started = time.monotonic()
    try:
        client.get(url)
    except httpx.HTTPError as exc:
        return names(exc), time.monotonic() - started

async def aattempt(url):
    async with httpx.AsyncClient(timeout=None) as client:
        started = time.monotonic()
        try:
            await client.get(url)
        except httpx.HTTPError as exc:
            return names(exc), time.monotonic() - started

client = httpx.Client(timeout=None)
url = f"http://127.0.0.1:{dead_sync}/"
aurl = f"http://127.0.0.1:{dead_async}/"
result = [attempt(client, url), attempt(client, url),
          asyncio.run(aattempt(aurl)), asyncio.run(aattempt(aurl))]
print(json.dumps(result))
"""


@pytest.mark.parametrize("order", ["connguard-first", "httpx-first"])
def test_both_import_orders(order: str, live: str) -> None:
    """httpx imported after install() or before it (backends already loaded) is guarded alike."""
    with blackhole() as dead_sync, blackhole() as dead_async:
        out = subprocess.run(
            [sys.executable, "-c", _IMPORT_ORDER, order, live,
             str(dead_sync.port), str(dead_async.port)],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
    for first, second in [json.loads(out.stdout)[0:2], json.loads(out.stdout)[2:4]]:
        assert first[0][0] == "ConnectTimeout"
        assert "ConnectDeadlineExceeded" in first[0]
        assert second[0][0] == "ConnectTimeout"  # a timed-out endpoint fails fast as one
        assert "EndpointTimedOut" in second[0]
        assert second[1] < FAST


def test_importing_connguard_does_not_import_httpx() -> None:
    """Only `import connguard.httpx` imports httpx; install() does not either."""
    code = (
        "import sys, connguard; connguard.install(environ={}); "
        "print('httpx' in sys.modules, 'httpcore' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("first_out", ["connguard", "opentelemetry"])
def test_coexists_with_opentelemetry(first_out: str, live: str) -> None:
    """With OpenTelemetry's httpx instrumentation on top both act; either uninstalls first."""
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    seen: list[str] = []
    instrumentor = HTTPXClientInstrumentor()
    _install()
    instrumentor.instrument(request_hook=lambda span, request: seen.append(str(request.url)))
    try:
        with blackhole() as dead, httpx.Client(timeout=None) as client:
            assert client.get(live).text == "ok"
            url = f"http://127.0.0.1:{dead.port}/"
            _assert_deadline_then_fast(_get_error(client, url), _get_error(client, url))
        assert len(seen) == 3
        if first_out == "connguard":
            connguard.uninstall()
            with httpx.Client() as client:
                assert client.get(live).text == "ok"
            assert len(seen) == 4
        else:
            instrumentor.uninstrument()
            with httpx.Client(timeout=None) as client:
                assert client.get(live).text == "ok"
                exc, took = _get_error(client, url)
            assert any(isinstance(e, EndpointUnavailable) for e in _chain(exc))
            assert took < FAST
            assert len(seen) == 3
    finally:
        instrumentor.uninstrument()
        connguard.uninstall()
    with httpx.Client() as client:
        assert client.get(live).text == "ok"


# -- GuardedTransport -------------------------------------------------------------------------


def test_guarded_transport_without_install(live: str) -> None:
    """Without install(), GuardedTransport(config=...) bounds the connect and then fails fast."""
    transport = GuardedTransport(config=CONFIG)
    with blackhole() as dead, httpx.Client(transport=transport, timeout=None) as client:
        assert client.get(live).text == "ok"
        url = f"http://127.0.0.1:{dead.port}/"
        _assert_deadline_then_fast(_get_error(client, url), _get_error(client, url))
    assert connguard.status() == []  # a private guard: nothing patched, nothing shared


def test_async_guarded_transport_without_install(live: str) -> None:
    """AsyncGuardedTransport behaves the same for the async client."""

    async def main(url: str) -> None:
        transport = AsyncGuardedTransport(config=CONFIG)
        async with httpx.AsyncClient(transport=transport, timeout=None) as client:
            assert (await client.get(live)).text == "ok"
            _assert_deadline_then_fast(
                await _aget_error(client, url), await _aget_error(client, url)
            )

    with blackhole() as dead:
        asyncio.run(main(f"http://127.0.0.1:{dead.port}/"))


def test_guarded_transport_forwards_transport_options() -> None:
    """Keyword arguments build the inner HTTPTransport (limits, proxy…) as httpx would."""
    limits = httpx.Limits(max_connections=3, max_keepalive_connections=1)
    transport = GuardedTransport(limits=limits, proxy="http://127.0.0.1:8888", verify=False)
    inner = transport.transport
    assert isinstance(inner, httpx.HTTPTransport)
    assert inner._pool._max_connections == 3
    assert isinstance(inner._pool, httpcore.HTTPProxy)
    with pytest.raises(TypeError):
        GuardedTransport(httpx.HTTPTransport(), verify=False)


def test_guarded_transport_uses_the_installed_guard_without_double_admission(live: str) -> None:
    """Under install() the transport shares the installed circuits and a recovery trial passes."""
    _install(open_seconds=0.2, max_open_seconds=0.2)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with httpx.Client(transport=GuardedTransport()) as client:
        _get_error(client, url)
        exc, _ = _get_error(client, url)
        assert any(isinstance(e, EndpointUnavailable) for e in _chain(exc))
        with uvicorn_server(port=port):
            time.sleep(0.3)
            assert client.get(url).text == "ok"
    record = _status(f"127.0.0.1:{port}")
    assert record["state"] == "closed"
    assert record["fast_failures"] == 1  # admitted once per connect, never twice


class _Opaque(httpx.BaseTransport):
    """A transport whose connection pool is not visible (as a third-party one may be)."""

    def __init__(self) -> None:
        self._hidden = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._hidden.handle_request(request)

    def close(self) -> None:
        self._hidden.close()


def test_guarded_transport_guards_an_opaque_transport_per_request(live: str) -> None:
    """An inner transport without a visible pool is guarded per request: bounded, then fast."""
    with blackhole() as dead:
        transport = GuardedTransport(_Opaque(), config=CONFIG)
        with httpx.Client(transport=transport, timeout=None) as client:
            assert client.get(live).text == "ok"
            url = f"http://127.0.0.1:{dead.port}/"
            (first, took), (second, fast) = _get_error(client, url), _get_error(client, url)
    assert isinstance(first, httpx.ConnectTimeout)
    assert took < SLOW
    assert isinstance(second, httpx.ConnectTimeout)  # a timed-out endpoint fails fast as one
    assert fast < FAST
    assert any(isinstance(e, EndpointUnavailable) for e in _chain(second))


def test_guarded_transport_standalone_guard_reads_the_environment() -> None:
    """Without install() or config=, the transport's guard comes from CONNGUARD_* variables."""
    code = (
        "import sys, time, httpx\n"
        "from connguard.httpx import GuardedTransport\n"
        "client = httpx.Client(transport=GuardedTransport(), timeout=None)\n"
        "url = f'http://127.0.0.1:{sys.argv[1]}/'\n"
        "for _ in range(2):\n"
        "    started = time.monotonic()\n"
        "    try:\n"
        "        client.get(url)\n"
        "    except httpx.HTTPError as exc:\n"
        "        print(type(exc).__name__, round(time.monotonic() - started, 3))\n"
    )
    env = {**os.environ, "CONNGUARD_CONNECT_TIMEOUT": "0.5", "CONNGUARD_MIN_CONNECT_TIMEOUT": "0.5"}
    with blackhole() as dead:
        out = subprocess.run(
            [sys.executable, "-c", code, str(dead.port)],
            capture_output=True, text=True, timeout=30, check=True, env=env,
        )  # fmt: skip
    (first, took), (second, fast) = (line.split() for line in out.stdout.splitlines())
    assert first == "ConnectTimeout"
    assert float(took) < SLOW
    assert second == "ConnectTimeout"
    assert float(fast) < FAST
