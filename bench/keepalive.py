"""``Connection``: a small asyncio HTTP/1.1 keep-alive client for load on 127.0.0.1 (bench/soak.py).

It costs about ten times less CPU per request than httpx: on a 2-core machine the client's CPU is taken from
the server's. It reads whole answers (Content-Length or chunked bodies) and reconnects after ``Connection:
close``; anything else it does not understand is a ``ValueError``, counted as an error by the caller.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import random
from typing import Any

VARIANTS = 64


class Connection:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> int:
        """Send one pre-built request, read the whole answer; the status (the body is discarded)."""
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = -1
        chunked = close = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = value == b"chunked"
            elif name == b"connection":
                close = value == b"close"
        if chunked:
            while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
                await self.reader.readexactly(size + 2)
            await self.reader.readuntil(b"\r\n")  # no trailers: the blank line ending the body
        elif length >= 0:
            await self.reader.readexactly(length)
        else:
            raise ValueError("response without Content-Length or chunked body")
        if close:
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def build_requests(port: int, example: dict[str, Any], n: int = VARIANTS, seed: int = 16) -> list[bytes]:
    """``n`` POST /predict requests: the served example with engine size and fuel figures varied a little."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        body = dict(example)
        for key in ("engine_size_l", "fuel_consumption_comb_l_per_100km"):
            if isinstance(body.get(key), (int, float)):
                body[key] = round(float(body[key]) * rng.uniform(0.8, 1.2), 1)
        data = json.dumps(body).encode()
        head = f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        out.append(head.encode() + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return out


def http_get(port: int, path: str) -> bytes:
    """One GET to 127.0.0.1:port; the body (any status)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().read()
    finally:
        conn.close()
