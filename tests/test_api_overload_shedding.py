"""Admission at parse time (``tabserve.api.shedding``): the protocol fed raw bytes through a fake transport, the
gate's arithmetic, the CLI wiring, and a burst against a real ``tabserve serve``."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httptools
import httpx
import orjson
import pytest
from uvicorn.config import Config
from uvicorn.importer import import_from_string
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from conftest import MODELS, start_server
from tabserve.api import create_app, middleware
from tabserve.api.middleware import BACKSTOP_FACTOR, GATED, Admission
from tabserve.api.shedding import SheddingProtocol
from tabserve.cli import SHEDDING_PROTOCOL
from tabserve.config import Settings
from tabserve.errors import OverloadedError

CO2 = json.loads((MODELS / "co2" / "1.0.0" / "manifest.json").read_text())["example_request"]
BODY = json.dumps(CO2).encode()


def request(path: str = "/predict", *, method: str = "POST", body: bytes = BODY, extra: bytes = b"") -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n".encode()
        + f"content-length: {len(body)}\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 40000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class _Responses:
    """httptools callbacks collecting (status, headers, body) per response (Content-Length or chunked)."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.out: list[tuple[int, dict[str, str], bytes]] = []
        self.headers: dict[str, str] = {}
        self.body = b""

    def on_message_begin(self) -> None:
        self.headers, self.body = {}, b""

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.out.append((self.parser.get_status_code(), self.headers, self.body))


def responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split a stream of HTTP/1.1 responses into (status, headers, body)."""
    collected = _Responses()
    collected.parser.feed_data(raw)
    return collected.out


class Harness:
    """One app, one protocol instance on a fake connection, the app's admission installed on a fresh loop."""

    def __init__(self, tmp_path: Path, **settings: Any) -> None:
        self.loop = asyncio.new_event_loop()
        values: dict[str, Any] = {"models_dir": MODELS, "data_dir": tmp_path, "prediction_log": False}
        self.app = create_app(Settings(**{**values, **settings}))
        self.app.state.ctx.registry.load_all()
        self.admission: Admission = self.app.state.ctx.admission
        self.admission.install(self.loop)
        config = Config(self.app, http=SheddingProtocol, lifespan="off", log_config=None)
        config.load()
        self.state = ServerState()
        self.state.default_headers = [(b"date", b"Thu, 26 Nov 2026 07:00:00 GMT")]  # uvicorn's ticker sets these
        self.transport = FakeTransport()
        self.protocol = SheddingProtocol(config, self.state, {}, self.loop)
        self.protocol.connection_made(self.transport)

    def feed(self, data: bytes) -> None:
        self.protocol.data_received(data)

    def run(self) -> None:
        """Let the tasks the protocol started finish."""
        for _ in range(5):
            self.loop.run_until_complete(asyncio.sleep(0))

    def close(self) -> None:
        self.admission.uninstall()
        self.loop.close()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    made = Harness(tmp_path, max_in_flight=1)
    yield made
    made.close()


def test_a_refused_request_is_a_complete_503_problem_without_a_task(harness: Harness) -> None:
    harness.admission.outstanding = 1  # as if a request held the only slot
    harness.feed(request(extra=b"x-request-id: client-id-1\r\n"))
    assert not harness.state.tasks  # refused before any task exists
    [(status, headers, body)] = responses(bytes(harness.transport.data))
    assert status == 503
    assert headers["content-type"] == "application/problem+json"
    assert headers["retry-after"] == "1"
    assert headers["x-request-id"] == "client-id-1"
    assert "date" in headers
    problem = json.loads(body)
    assert problem["type"].endswith("/overloaded") and problem["status"] == 503
    assert problem["request_id"] == "client-id-1"
    assert "in flight" in problem["detail"]
    assert not harness.transport.closed
    assert harness.admission.take_shed() == 1
    metrics = harness.app.state.ctx.metrics.render()[0].decode()
    assert 'tabserve_rejected_requests_total{reason="overload"} 1.0' in metrics
    assert 'tabserve_requests_total{model="",route="unmatched",status="503"} 1.0' in metrics


def test_the_connection_goes_on_after_a_refusal_even_mid_body(harness: Harness) -> None:
    harness.admission.outstanding = 1
    whole = request()
    harness.feed(whole[:60])  # headers complete? not yet
    harness.feed(whole[60 : whole.index(b"\r\n\r\n") + 4 + 10])  # headers and the start of the body: refused
    assert [s for s, _, _ in responses(bytes(harness.transport.data))] == [503]
    harness.admission.outstanding = 0
    harness.feed(whole[whole.index(b"\r\n\r\n") + 4 + 10 :] + request(extra=b"x-request-id: second\r\n"))
    harness.run()
    answers = responses(bytes(harness.transport.data))
    assert [s for s, _, _ in answers] == [503, 200]
    assert json.loads(answers[1][2])["request_id"] == "second"
    assert harness.admission.outstanding == 0  # the admitted request released its slot


def test_connection_close_head_and_oip_refusals(harness: Harness) -> None:
    harness.admission.outstanding = 1
    written = harness.transport.data
    harness.feed(request("/v2/models/co2/infer", body=b"{}"))
    [(status, headers, body)] = responses(bytes(written))
    assert status == 503 and headers["content-type"] == "application/json" and "error" in json.loads(body)
    written.clear()
    harness.feed(request(method="HEAD", body=b""))
    head, _, rest = bytes(written).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503") and b"content-length: " in head and rest == b""  # no body for HEAD
    written.clear()
    harness.feed(request(extra=b"connection: close\r\n"))
    [(status, headers, _)] = responses(bytes(written))
    assert status == 503 and headers["connection"] == "close"
    assert harness.transport.closed


def test_parse_time_refusals_are_counted_in_one_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fastapi.testclient import TestClient

    app = create_app(Settings(models_dir=MODELS, data_dir=tmp_path, prediction_log=False, models="co2"))
    with TestClient(app):
        app.state.ctx.admission.refused(0.0)
        app.state.ctx.admission.refused(0.0)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    warning = [line for line in lines if line["message"].startswith("overloaded")]
    assert warning and warning[0]["shed"] == 2 and warning[0]["severity"] == "WARNING"


def test_probes_are_never_refused_at_parse_time(harness: Harness) -> None:
    harness.admission.outstanding = 1
    harness.feed(request("/health", method="GET", body=b""))
    harness.run()
    [(status, _, _)] = responses(bytes(harness.transport.data))
    assert status == 200


def test_a_task_that_never_reaches_the_envelope_still_releases_its_slot(harness: Harness) -> None:
    harness.feed(request())
    assert harness.admission.outstanding == 1
    for task in list(harness.state.tasks):
        task.cancel()
    harness.run()
    assert harness.admission.outstanding == 0


def test_gate_projects_the_wait_from_the_time_between_answers() -> None:
    admission = Admission(limit=0, max_queue_s=0.010)
    admission.service_s = 0.001
    admission.outstanding = 10
    scopes: list[dict[str, Any]] = [{} for _ in range(3)]
    assert admission.gate(scopes[0]) is None  # 10 ahead x 1 ms = 10 ms: not over the bound
    assert scopes[0][GATED] is True
    refused = admission.gate(scopes[1])
    assert refused is not None and "11 requests ahead" in refused and GATED not in scopes[1]
    assert admission.gate(scopes[2], 20_000) is None  # a 20 KB batch may wait two bounds
    admission.release(scopes[0])
    admission.release(scopes[0])  # a second release of the same request is a no-op
    assert admission.outstanding == 11  # 10 + 2 accepted - 1 answered


def test_service_time_is_the_time_between_answers_while_requests_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]  # a fake clock: the estimate is arithmetic, not a timing measurement
    monkeypatch.setattr(middleware, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    admission = Admission(limit=0, max_queue_s=0.010)
    scopes: list[dict[str, Any]] = [{} for _ in range(60)]
    for scope in scopes:
        assert admission.gate(scope) is None  # nothing measured yet: everything is accepted
    for scope in scopes:
        clock[0] += 0.000_250  # a 250 µs handler
        admission.release(scope)
    assert admission.service_s == pytest.approx(0.000_250)
    assert admission.outstanding == 0
    stall = admission._ewma(admission.service_s, 0.050)  # a stall of a descheduled process is clipped to 3x
    assert stall < admission.service_s * 1.2
    clock[0] += 10.0  # idle for 10 s: the next answer's sample is its own time, not the idle gap
    alone: dict[str, Any] = {}
    admission.gate(alone)
    clock[0] += 0.000_200
    admission.release(alone)
    assert admission.service_s < 0.000_250  # moved towards 200 µs


def test_one_slow_answer_cannot_lock_the_gate(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 2 s answer (a hot reload overlapping a prediction) as the first sample used to set the estimate to 2 s:
    every request with one other outstanding was refused from then on, and with no backlog left, no sample
    ever brought the estimate down."""
    clock = [1000.0]
    monkeypatch.setattr(middleware, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    admission = Admission(limit=0, max_queue_s=0.100)
    prediction, reload = {}, {}
    assert admission.gate(prediction) is None and admission.gate(reload) is None
    clock[0] += 0.001
    admission.release(prediction)
    clock[0] += 2.0
    admission.release(reload)  # the reload was waited for since the prediction's answer: a 2 s sample
    assert admission.service_s <= 0.100  # clipped to the queue bound
    refused = 0
    for _ in range(200):  # two clients, 1 ms each, always one outstanding when the other arrives
        first, second = {}, {}
        assert admission.gate(first) is None
        refused += admission.gate(second) is not None
        clock[0] += 0.001
        admission.release(first)
        if GATED in second:
            clock[0] += 0.001
            admission.release(second)
    assert refused == 0
    assert admission.service_s < 0.010  # and the estimate came back down to the real service time


def test_backstop_in_the_app_is_looser_for_requests_the_gate_accepted() -> None:
    import contextvars

    from tabserve.api.middleware import _ENQUEUED

    admission = Admission(limit=0, max_queue_s=0.010)
    context = contextvars.copy_context()
    now = time.perf_counter()
    context.run(_ENQUEUED.set, now - 0.015)
    with pytest.raises(OverloadedError):
        context.run(admission.admit, now)
    assert BACKSTOP_FACTOR * 0.010 > 0.015
    admission.admit(now, 0, now - 0.015)  # accepted at parse time: the estimate was a little off, serve it
    with pytest.raises(OverloadedError):
        admission.admit(now, 0, now - BACKSTOP_FACTOR * 0.010 - 0.001)  # but not any wait at all


def test_serve_uses_the_shedding_protocol_unless_turned_off() -> None:
    protocol = import_from_string(SHEDDING_PROTOCOL)
    assert protocol is SheddingProtocol and issubclass(protocol, HttpToolsProtocol)
    # the hooks it overrides are uvicorn-internal: an upgrade that renames them must fail here, not in production
    hooks = ["on_message_begin", "on_headers_complete", "on_body", "on_message_complete", "_start_asgi_task"]
    hooks += ["on_response_complete", "_unset_keepalive_if_required", "timeout_keep_alive_handler", "connection_lost"]
    for hook in hooks:
        assert hook in HttpToolsProtocol.__dict__, hook
    assert Settings().shed_at_parse is True


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    collected = _Responses()
    while not collected.out:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before a response"
        collected.parser.feed_data(chunk)
    return collected.out[0]


@pytest.mark.e2e
def test_a_burst_against_a_real_server_gets_fast_503s_and_the_server_stays_healthy(tmp_path: Path) -> None:
    server = start_server(
        tmp_path,
        {"TABSERVE_MODELS": "co2", "TABSERVE_PREDICTION_LOG": "false", "TABSERVE_MAX_QUEUE_MS": "1"},
    )
    try:
        port = int(server.url.rsplit(":", 1)[1])
        sockets = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(40)]
        for sock in sockets:  # open and use every connection first: the bursts then arrive together
            sock.sendall(request())
            assert read_response(sock)[0] == 200
        answers = []
        for _ in range(10):  # bursts: the first measure the service time, the next find a queue
            for sock in sockets:
                sock.sendall(request())
            answers += [read_response(sock) for sock in sockets]
        for sock in sockets:
            sock.close()
        statuses = [status for status, _, _ in answers]
        assert set(statuses) <= {200, 503} and 503 in statuses and 200 in statuses
        refused = [json.loads(body) for status, _, body in answers if status == 503]
        assert all(problem["type"].endswith("/overloaded") for problem in refused)
        assert any("requests ahead" in problem["detail"] for problem in refused)  # decided at parse time
        assert httpx.get(server.url + "/ready", timeout=10).status_code == 200
        metrics = httpx.get(server.url + "/metrics", timeout=10).text
        assert 'tabserve_rejected_requests_total{reason="overload"}' in metrics
    finally:
        assert server.stop() == 0


def test_pipelined_requests_are_not_gated_against_their_finished_predecessor(harness: Harness) -> None:
    """uvicorn starts the next pipelined request from inside the previous response's last ``send``; its slot
    must already be free then (one slot here: three pipelined requests on an idle worker all get answered)."""
    harness.feed(request() + request() + request())
    for _ in range(3):
        harness.run()
    assert [status for status, _, _ in responses(bytes(harness.transport.data))] == [200, 200, 200]
    assert harness.admission.outstanding == 0


def test_a_refused_request_that_expected_100_continue_closes_the_connection(harness: Harness) -> None:
    """The client will not send the body after a final answer; the parser would read its next request as
    that body, so the refusal closes the connection instead of keeping it alive."""
    harness.admission.outstanding = 1  # the only slot is taken: refused at parse time
    head = request(extra=b"expect: 100-continue\r\n")[: -len(BODY)]  # headers only, body not sent
    harness.feed(head)
    ((status, headers, _),) = responses(bytes(harness.transport.data))
    assert status == 503
    assert headers.get("connection") == "close"
    assert harness.transport.closed


def test_a_refusal_at_parse_time_builds_no_scope_or_cycle(harness: Harness) -> None:
    """The decision comes before uvicorn's scope, cycle and Event: the connection keeps no trace of the request."""
    harness.admission.outstanding = 1
    harness.feed(request() + request())  # two refused in one read: the second is not taken for a pipelined one
    assert harness.protocol.cycle is None and harness.protocol.scope is None
    assert [status for status, _, _ in responses(bytes(harness.transport.data))] == [503, 503]
    assert harness.admission.take_shed() == 2
    harness.admission.outstanding = 0
    harness.feed(request())
    harness.run()
    assert [status for status, _, _ in responses(bytes(harness.transport.data))] == [503, 503, 200]
    assert harness.protocol.scope is not None and harness.protocol.scope["method"] == "POST"


def test_the_503_template_is_byte_for_byte_the_document(harness: Harness) -> None:
    """The spliced template equals orjson.dumps of the problem document, escaping included."""
    from tabserve.api.problems import problem_document

    harness.admission.outstanding = 1
    rid = 'quote"and\\backslash'
    harness.feed(request(extra=f"x-request-id: {rid}\r\n".encode()))
    [(status, headers, body)] = responses(bytes(harness.transport.data))
    assert status == 503 and headers["x-request-id"] == rid
    exc = OverloadedError("1 requests already in flight on this worker; retry shortly")
    document = problem_document(exc.status, exc.title, exc.detail, exc.slug)
    document["request_id"] = rid
    assert body == orjson.dumps(document)
    assert int(headers["content-length"]) == len(body)


def test_a_refused_http_1_0_request_closes_the_connection(harness: Harness) -> None:
    harness.admission.outstanding = 1
    harness.feed(request().replace(b"HTTP/1.1", b"HTTP/1.0", 1))
    [(status, headers, _)] = responses(bytes(harness.transport.data))
    assert status == 503 and headers["connection"] == "close" and harness.transport.closed


@pytest.mark.parametrize("target", ["/health?verbose=1", "/%68ealth", "/ready"])
def test_probes_are_recognised_as_uvicorn_reads_the_path(harness: Harness, target: str) -> None:
    harness.admission.outstanding = 1
    harness.feed(request(target, method="GET", body=b""))
    harness.run()
    [(status, _, _)] = responses(bytes(harness.transport.data))
    if target != "/ready":  # /ready answers by readiness
        assert status == 200
    assert harness.admission.take_shed() == 0  # never refused by the gate


def test_a_pipelined_request_is_still_gated_when_uvicorn_starts_it(harness: Harness) -> None:
    """Behind a request being answered, a request is decided when it starts (through its cycle)."""
    harness.feed(request() + request(extra=b"x-request-id: second\r\n"))
    assert harness.admission.outstanding == 1  # the first holds the only slot; the second waits in the pipeline
    harness.admission.outstanding += 1  # another request takes a slot meanwhile
    for _ in range(3):
        harness.run()
    answers = responses(bytes(harness.transport.data))
    assert [status for status, _, _ in answers] == [200, 503]
    assert answers[1][1]["x-request-id"] == "second"
    assert not harness.transport.closed


def test_idle_connections_are_closed_after_the_keep_alive_timeout(harness: Harness) -> None:
    """One timer per connection instead of one per response: it closes a connection idle for the whole
    timeout, waits out the rest of it for one that was busy meanwhile, and leaves a busy one alone."""
    clock = [100.0]
    harness.loop.time = lambda: clock[0]  # type: ignore[method-assign]
    protocol = harness.protocol
    timeout = protocol.timeout_keep_alive
    harness.admission.outstanding = 1
    harness.feed(request())  # refused: the connection is idle from now
    timer = protocol.timeout_keep_alive_task
    assert timer is not None
    clock[0] += timeout / 2
    harness.feed(request())  # a second refusal: the same timer, the idle time counted from this answer
    assert protocol.timeout_keep_alive_task is timer
    clock[0] += timeout / 2
    timer.cancel()
    protocol.timeout_keep_alive_handler()  # fires: idle for half the timeout only
    assert not harness.transport.closed
    assert protocol.timeout_keep_alive_task is not None and protocol.timeout_keep_alive_task is not timer
    protocol.timeout_keep_alive_task.cancel()
    protocol.data_received(request()[:30])  # a request arrives, partly: busy
    clock[0] += 10 * timeout
    protocol.timeout_keep_alive_handler()
    assert not harness.transport.closed and protocol.timeout_keep_alive_task is None  # busy: not re-armed
    protocol.data_received(request()[30:])  # refused: idle again, a new timer
    assert protocol.timeout_keep_alive_task is not None
    protocol.timeout_keep_alive_task.cancel()
    clock[0] += timeout
    protocol.timeout_keep_alive_handler()
    assert harness.transport.closed


def test_a_lost_connection_stops_its_keep_alive_timer(harness: Harness) -> None:
    harness.admission.outstanding = 1
    harness.feed(request())
    timer = harness.protocol.timeout_keep_alive_task
    assert timer is not None
    harness.protocol.connection_lost(None)
    assert harness.protocol.timeout_keep_alive_task is None and timer.cancelled()
