"""``FaultProxy``: an asyncio TCP proxy (own event loop, own thread) between a server and a database, with
faults the test turns on and off while traffic flows.

- ``delay_s``: every chunk forwarded, in either direction, waits that long first (a slow network or a slow
  database server: each round trip costs twice the delay).
- ``refuse()``: resets every open connection now and every new one until ``accept()`` (a database that
  refuses mid-stream); ``refused`` and ``reset`` count what it did.

Every socket is closed with an RST (``SO_LINGER`` 0), as a crashed peer or a firewall would, so the client
sees the fault at once instead of after a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any


class FaultProxy:
    """127.0.0.1:<port> -> ``upstream``; thread-safe controls (see the module docstring)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.delay_s = 0.0
        self.refused = 0
        self.reset = 0
        self.accepted = 0
        self.delayed = 0
        """Chunks forwarded late (``delay_s`` > 0)."""
        self._refusing = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._thread.start()
        self._ready.wait(5)
        if self._server is None:
            raise RuntimeError("fault proxy did not start")
        self.port: int = self._server.sockets[0].getsockname()[1]

    # -- controls (any thread) ---------------------------------------------------------------------------
    def refuse(self) -> None:
        """Reset every open connection and refuse new ones."""
        self._call(self._refuse())

    def accept(self) -> None:
        """Accept connections again."""
        self._refusing = False

    def close(self) -> None:
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    # -- inside the loop -----------------------------------------------------------------------------------
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self._ready.set()
        self._loop.run_forever()
        self._loop.close()

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(5)

    async def _refuse(self) -> None:
        self._refusing = True
        for writer in list(self._writers):
            self.reset += 1
            _abort(writer)
        self._writers.clear()

    async def _shutdown(self) -> None:
        await self._refuse()
        if self._server is not None:
            self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            self.refused += 1
            _abort(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _abort(writer)
            return
        self.accepted += 1
        self._writers |= {writer, up_writer}
        pumps = [asyncio.create_task(self._pump(reader, up_writer)), asyncio.create_task(self._pump(up_reader, writer))]
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for pump in pumps:
            pump.cancel()
        for w in (writer, up_writer):
            self._writers.discard(w)
            _abort(w)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                if self.delay_s:
                    self.delayed += 1
                    await asyncio.sleep(self.delay_s)
                if self._refusing:
                    return
                writer.write(data)
                await writer.drain()


def _abort(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
