"""Hostile payloads against a real ``tabserve serve`` process: each one a fast 4xx (or, where noted, a defined
answer), never a reset, hang or 5xx, and the worker's resident memory stays bounded (VmRSS of the server process,
read from /proc after each payload; the figures are printed with ``-s``)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import ServerProcess, start_server

pytestmark = pytest.mark.e2e
RSS_BOUND_MB = 60.0
"""Most the worker's RSS may grow over its figure after warm-up, across every payload here."""
EXAMPLE = {
    "bill_length_mm": 39.1,
    "bill_depth_mm": 18.7,
    "flipper_length_mm": 181,
    "body_mass_g": 3750,
    "island": "Torgersen",
    "sex": "male",
}


def rss_mb(server: ServerProcess) -> float:
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, list[float]]]:
    server = start_server(
        tmp_path_factory.mktemp("hostile"),
        {"TABSERVE_ACCESS_LOG": "false", "TABSERVE_DEFAULT_MODEL": "penguins", "TABSERVE_MAX_IN_FLIGHT": "0"},
    )
    for _ in range(50):  # warm-up: the figures compare with a worker that has answered
        httpx.post(server.url + "/predict", json=EXAMPLE, timeout=10)
    baseline = [rss_mb(server)]
    yield server, baseline
    server.stop()


def check_memory(hostile: tuple[ServerProcess, list[float]], label: str) -> None:
    server, baseline = hostile
    now = rss_mb(server)
    print(f"RSS after {label}: {now:.1f} MB (baseline {baseline[0]:.1f} MB, +{now - baseline[0]:.1f})")
    assert now - baseline[0] < RSS_BOUND_MB, f"{label}: RSS {now:.1f} MB"
    assert httpx.post(server.url + "/predict", json=EXAMPLE, timeout=5).status_code == 200  # still serving


def raw(server: ServerProcess, data: bytes, timeout: float = 15.0) -> bytes:
    """Send ``data`` on a fresh connection; the answer's status line and headers (empty if none came)."""
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


def post(server: ServerProcess, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    started = time.perf_counter()
    response = httpx.post(
        server.url + "/predict",
        content=body,
        headers={"content-type": "application/json", **(headers or {})},
        timeout=30,
    )
    assert time.perf_counter() - started < 5.0, "a fast answer"
    return response


def assert_problem(response: httpx.Response, *statuses: int) -> None:
    assert response.status_code in statuses, response.text[:500]
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == response.status_code


def test_deeply_nested_json(hostile: tuple[ServerProcess, list[float]]) -> None:
    server, _ = hostile
    for depth in (10_000, 200_000):
        assert_problem(post(server, b"[" * depth + b"]" * depth), 400, 413)
        assert_problem(post(server, b'{"a":' * depth + b"1" + b"}" * depth), 400, 413)
    check_memory(hostile, "nested JSON")


@pytest.mark.parametrize("megabytes", [8, 10, 20, 100])
def test_urllib_client_sees_413_not_a_reset(hostile: tuple[ServerProcess, list[float]], megabytes: int) -> None:
    """urllib sends ``Connection: close`` and the whole body before it reads: the answer must survive that."""
    server, _ = hostile
    body = b" " * (megabytes << 20)
    for _ in range(3):
        request = urllib.request.Request(
            server.url + "/predict", data=body, headers={"Content-Type": "application/json"}
        )
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=30)
        assert caught.value.code == 413
        assert json.loads(caught.value.read())["status"] == 413
    check_memory(hostile, f"{megabytes} MB bodies")


def test_slow_drip_body_is_cut_by_the_body_timeout(hostile: tuple[ServerProcess, list[float]]) -> None:
    server, _ = hostile
    port = int(server.url.rsplit(":", 1)[1])
    body = json.dumps(EXAMPLE).encode()
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        sock.sendall(b"Content-Length: %d\r\n\r\n" % len(body))
        answer = b""
        sock.settimeout(1.0)
        for byte in body:
            sock.sendall(bytes([byte]))
            try:
                answer = sock.recv(4096)
            except TimeoutError:
                continue
            break
    elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert 9 < elapsed < 15, elapsed
    check_memory(hostile, "slow drip")


def test_slowloris_connections_do_not_stop_the_worker(hostile: tuple[ServerProcess, list[float]]) -> None:
    server, _ = hostile
    port = int(server.url.rsplit(":", 1)[1])
    socks = []
    try:
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            socks.append(sock)
        started = time.perf_counter()
        for _ in range(20):
            assert httpx.post(server.url + "/predict", json=EXAMPLE, timeout=5).status_code == 200
        assert time.perf_counter() - started < 5
        for sock in socks:  # still trickling headers: the worker keeps serving
            sock.sendall(b"a")
        assert httpx.get(server.url + "/ready", timeout=5).status_code == 200
        check_memory(hostile, "300 slowloris connections")
    finally:
        for sock in socks:
            sock.close()


def test_huge_or_countless_headers_get_431_and_memory_stays_bounded(
    hostile: tuple[ServerProcess, list[float]],
) -> None:
    server, _ = hostile
    head = b"GET /health HTTP/1.1\r\nHost: x\r\n"
    assert raw(server, head + b"X-A: " + b"a" * 8000 + b"\r\n\r\n").startswith(b"HTTP/1.1 200")
    many = b"".join(b"X-%d: v\r\n" % i for i in range(150))  # 1.6 KB, over the count
    assert raw(server, head + many + b"\r\n").startswith(b"HTTP/1.1 431")
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:  # a 20 MB header, streamed
        sock.sendall(head + b"X-Huge: ")
        with contextlib.suppress(OSError):  # the server answers and closes after 64 KB
            for _ in range(320):
                sock.sendall(b"a" * 65536)
        answer = b""
        with contextlib.suppress(OSError):  # closed with our bytes unread: the kernel may reset instead
            answer = sock.recv(65536)
    assert answer == b"" or (answer.startswith(b"HTTP/1.1 431") and b"application/problem+json" in answer)
    check_memory(hostile, "a 20 MB header and 150 headers")


def test_many_keys_duplicate_keys_invalid_utf8(hostile: tuple[ServerProcess, list[float]]) -> None:
    server, _ = hostile
    many = "{" + ",".join(f'"{i:x}":0' for i in range(100_000)) + "}"
    assert_problem(post(server, many.encode()), 413, 422)
    limit_sized = "{" + ",".join(f'"{i:x}":0' for i in range(20_000)) + "}"
    assert_problem(post(server, limit_sized.encode()), 422)
    # duplicate keys: the last one wins (RFC 8259 leaves it open; orjson, JavaScript and Python's json agree)
    duplicated = json.dumps(EXAMPLE)[:-1] + ', "island": "Biscoe", "island": "Dream"}'
    answer = post(server, duplicated.encode())
    assert answer.status_code == 200
    assert_problem(post(server, b'{"island": "\xff\xfe", "sex": "male"}'), 400)
    assert post(server, b"\xef\xbb\xbf" + json.dumps(EXAMPLE).encode()).status_code == 200  # a UTF-8 BOM is read
    check_memory(hostile, "100,000 keys, duplicate keys, invalid UTF-8")


def test_a_million_rows_and_a_lying_content_length(hostile: tuple[ServerProcess, list[float]]) -> None:
    server, _ = hostile
    rows = b'{"instances": [' + b",".join([json.dumps(EXAMPLE).encode()] * 1_000_000) + b"]}"
    assert_problem(post(server, rows), 413)
    del rows
    body = json.dumps(EXAMPLE).encode()
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    # shorter than declared: the server waits for the rest, then the body timeout answers
    answer = raw(server, head % (len(body) + 50) + body, timeout=15)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    # longer than declared: the declared bytes are the body (malformed JSON here), the rest is not a request
    answer = raw(server, head % 10 + body, timeout=5)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    check_memory(hostile, "1,000,000 rows, lying Content-Length")


def test_chunked_bodies(hostile: tuple[ServerProcess, list[float]]) -> None:
    server, _ = hostile

    def chunked(total: int, piece: bytes) -> Iterator[bytes]:
        sent = 0
        while sent < total:
            yield piece
            sent += len(piece)

    body = json.dumps(EXAMPLE).encode()
    ok = httpx.post(
        server.url + "/predict", content=iter([body[:10], body[10:]]), headers={"content-type": "application/json"}
    )
    assert ok.status_code == 200, ok.text
    big = httpx.post(
        server.url + "/predict",
        content=chunked(20 << 20, b" " * 65536),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert_problem(big, 413)
    check_memory(hostile, "chunked bodies")


def test_concurrent_hostile_clients_leave_the_worker_serving(hostile: tuple[ServerProcess, list[float]]) -> None:
    server, _ = hostile
    errors: list[BaseException] = []

    def flood() -> None:
        try:
            for _ in range(5):
                assert post(server, b" " * (4 << 20)).status_code == 413
        except BaseException as exc:  # collected for the main thread
            errors.append(exc)

    threads = [threading.Thread(target=flood) for _ in range(4)]
    for thread in threads:
        thread.start()
    for _ in range(20):
        assert httpx.post(server.url + "/predict", json=EXAMPLE, timeout=10).status_code == 200
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    check_memory(hostile, "4 concurrent 4 MB floods")
