"""uvloop (issue 14, row F6): no context-mark leak into protocol tasks; sock_connect guarded."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest

import connguard
from connguard import ConnectDeadlineExceeded, EndpointUnavailable
from connguard.testing import blackhole, tcp_server

uvloop = pytest.importorskip("uvloop")

FAST = {"connect_timeout": 0.5, "min_connect_timeout": 0.2, "open_seconds": 30}


def run(coro: Any) -> Any:
    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def test_task_spawned_from_connection_made_is_guarded() -> None:
    """A task created in Protocol.connection_made gets connguard's deadline on its connects."""
    connguard.install(environ={}, **FAST)
    with blackhole() as dead, tcp_server() as live:

        async def main() -> BaseException | None:
            loop = asyncio.get_running_loop()
            spawned: asyncio.Future[asyncio.Task[Any]] = loop.create_future()

            async def dial_dead() -> None:
                reader_writer = asyncio.open_connection(*dead.address)
                _, writer = await asyncio.wait_for(reader_writer, 5.0)
                writer.close()

            class Spawner(asyncio.Protocol):
                def connection_made(self, transport: Any) -> None:
                    spawned.set_result(loop.create_task(dial_dead()))
                    transport.close()

            await loop.create_connection(Spawner, *live.address)
            task = await spawned
            try:
                await task
            except BaseException as exc:
                return exc
            return None

        started = time.monotonic()
        error = run(main())
        assert isinstance(error, ConnectDeadlineExceeded)  # not asyncio's own 5 s timeout
        assert time.monotonic() - started < 3.0


def test_uvloop_sock_connect_is_guarded() -> None:
    """loop.sock_connect under uvloop gets the deadline, then fails fast."""
    connguard.install(environ={}, **FAST)
    with blackhole() as dead:

        async def attempt() -> BaseException | None:
            loop = asyncio.get_running_loop()
            with socket.socket() as sock:
                sock.setblocking(False)
                try:
                    await asyncio.wait_for(loop.sock_connect(sock, dead.address), 5.0)
                except BaseException as exc:
                    return exc
            return None

        started = time.monotonic()
        assert isinstance(run(attempt()), ConnectDeadlineExceeded)
        assert time.monotonic() - started < 3.0
        assert isinstance(run(attempt()), EndpointUnavailable)
