"""``POST /predict``, ``POST /models/{name}/predict`` and the Open Inference Protocol's ``infer``: the hot path,
answered below the framework.

Starlette routing, request/response objects and FastAPI's layers cost more than the model here, so these
routes are served by a small ASGI layer in front of the FastAPI app: it reads the raw body, calls the same
``PredictionService`` as every other route, and answers with orjson; errors are the same problem+json (and
``{"error": ...}`` for ``infer``, whose work is ``routes_oip.infer_payload``). Everything else falls through to
FastAPI. The predict routes are documented in OpenAPI by ``api/openapi.py``, ``infer`` by its FastAPI route.

A batch's answers come as columns (``confidence.BatchAnswers``) and are written straight to JSON
(``predictions_json``): the numbers as orjson writes a float array, the rest from per-batch templates, so no
per-row object is built for the response; the bytes are exactly those of ``orjson.dumps`` of the answer dicts.

A single instance shares its ONNX call with the other single instances ready in the same loop turn when other
requests are outstanding (``Admission.outstanding``, counted when uvicorn parsed their headers, under ``tabserve
serve``); alone, or under a server without that count, it runs at once, so a lone client does not wait a loop
turn for company that is not coming.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from itertools import chain
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from tabserve.api.body import body_headers, check_json_media, parse_json, read_body
from tabserve.api.middleware import active_admission
from tabserve.api.problems import PROBLEM_JSON, problem_document
from tabserve.api.routes_oip import infer_payload, infer_target
from tabserve.confidence import BatchAnswers
from tabserve.errors import RequestValidationError, TabserveError
from tabserve.features.batch import WarningRun
from tabserve.features.fields import InputWarning
from tabserve.service import BatchResult, PredictionService

JSON_HEADERS = [(b"content-type", b"application/json")]
PROBLEM_HEADERS = [(b"content-type", PROBLEM_JSON.encode())]
log = logging.getLogger(__name__)


def predict_target(path: str, default_model: str) -> tuple[str, str] | None:
    """(model name, route template) when ``path`` is a predict route, else None."""
    if path == "/predict":
        return default_model, "/predict"
    if path.startswith("/models/") and path.endswith("/predict"):
        name = path[8:-8]
        if name and "/" not in name:
            return name, "/models/{name}/predict"
    return None


class PredictFastPath:
    def __init__(self, app: ASGIApp, *, service: PredictionService, default_model: str, max_body_bytes: int) -> None:
        self.app = app
        self.service = service
        self.default_model = default_model
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = predict_target(scope["path"], self.default_model) if scope["type"] == "http" else None
        if target is None:
            infer = infer_target(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
            if infer is None:
                await self.app(scope, receive, send)
            else:
                await self._infer(infer, scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        name, state["route"] = target
        try:
            if scope["method"] != "POST":
                await self._problem(send, 405, "Method not allowed", "method-not-allowed", "use POST", scope, [])
                return
            payload = await self._predict(name, await self._body(scope, receive), scope, state)
        except TabserveError as exc:
            errors = exc.errors if isinstance(exc, RequestValidationError) else None
            headers = [(b"retry-after", str(exc.retry_after_s).encode())] if hasattr(exc, "retry_after_s") else []
            await self._problem(send, exc.status, exc.title, exc.slug, exc.detail, scope, headers, errors)
            return
        except Exception:  # a bug: log it, answer problem+json, keep serving
            log.exception("unexpected error in %s", scope["path"])
            await self._problem(
                send, 500, "Internal error", "internal-error", "an unexpected error occurred", scope, []
            )
            return
        await send({"type": "http.response.start", "status": 200, "headers": JSON_HEADERS})
        await send({"type": "http.response.body", "body": payload})

    async def _infer(self, target: tuple[str, str | None, str], scope: Scope, receive: Receive, send: Send) -> None:
        """An Open Inference Protocol ``infer`` (any body type: the binary tensor extension is not JSON)."""
        state: dict[str, Any] = scope.setdefault("state", {})
        name, version, state["route"] = target
        content_length = header_length = None
        for key, value in scope["headers"]:
            if key == b"content-length":
                content_length = value.decode("latin-1")
            elif key == b"inference-header-content-length":
                header_length = value.decode("latin-1")
        try:
            status, payload = await infer_payload(
                self.service, name, version, receive, content_length, header_length, self.max_body_bytes, state
            )
        except Exception:  # a bug: log it, answer in the protocol's error form, keep serving
            log.exception("unexpected error in %s", scope["path"])
            status, payload = 500, orjson.dumps({"error": "an unexpected error occurred"})
        await send({"type": "http.response.start", "status": status, "headers": JSON_HEADERS})
        await send({"type": "http.response.body", "body": payload})

    async def _body(self, scope: Scope, receive: Receive) -> Any:
        media, declared = body_headers(scope["headers"])
        check_json_media(media)
        return parse_json(await read_body(receive, declared, self.max_body_bytes))

    async def _predict(self, name: str, body: Any, scope: Scope, state: dict[str, Any]) -> bytes:
        query = scope["query_string"]
        level = dict(parse_qsl(query.decode("latin-1"))).get("level") if query else None
        admission = active_admission()
        share = admission is not None and admission.outstanding > 1  # counted at parse time (0 without the gate)
        result = await self.service.answer_async(
            name, body, request_id=state["request_id"], level=level, info=state, share=share
        )
        started = time.perf_counter()
        if isinstance(result, BatchResult) and not result.answers.built:
            document = {
                "predictions": orjson.Fragment(predictions_json(result.answers)),
                "model": result.model_ref(),
                "request_id": result.request_id,
            }
            payload = orjson.dumps(document)
        else:  # one instance, or a batch whose answer dicts a hook built already (dumped faster than rewritten)
            payload = orjson.dumps(result.document() if isinstance(result, BatchResult) else result)
        state["timings"].serialise += time.perf_counter() - started
        return payload

    @staticmethod
    async def _problem(
        send: Send,
        status: int,
        title: str,
        slug: str,
        detail: str,
        scope: Scope,
        headers: list[tuple[bytes, bytes]],
        errors: Any = None,
    ) -> None:
        body = problem_document(status, title, detail, slug, errors, scope["path"])
        body["request_id"] = scope.get("state", {}).get("request_id", "")
        if status == 405:
            headers = [*headers, (b"allow", b"POST")]
        await send({"type": "http.response.start", "status": status, "headers": [*PROBLEM_HEADERS, *headers]})
        await send({"type": "http.response.body", "body": orjson.dumps(body)})


_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def predictions_json(answers: BatchAnswers) -> bytes:
    """The JSON array of a batch's answer objects, byte for byte ``orjson.dumps(answers.dicts())``.

    A regression answer is ``{"prediction":P,"unit":..,"interval":{"level":..,"lower":L,"upper":U}`` then its
    warnings and flag: P, L and U are cut from one ``orjson.dumps`` of each float column (the same digits as for
    Python floats), the tail is one of a few byte strings (one per combination of warnings and flag)."""
    if answers.interval is None or answers.built:  # classes, or dicts a hook built already: dumped as they are
        return orjson.dumps(answers.dicts())
    n = answers.rows
    prediction, lower, upper = (orjson.dumps(column, option=_NUMPY)[1:-1].split(b",") for column in answers.interval)
    head = b',{"prediction":'
    middle = b',"unit":%b,"interval":{"level":%b,"lower":' % (orjson.dumps(answers.unit), orjson.dumps(answers.level))
    parts: list[bytes] = [head] * (7 * n)
    parts[0] = head[1:]
    parts[1::7] = prediction
    parts[2::7] = [middle] * n
    parts[3::7] = lower
    parts[4::7] = [b',"upper":'] * n
    parts[5::7] = upper
    parts[6::7] = _tails(answers.out_of_distribution, answers.runs, n)
    return b"[%b]" % b"".join(parts)


_PLAIN_TAIL = b'},"warnings":[],"out_of_distribution":false}'
_FLAGGED_TAIL = b'},"warnings":[],"out_of_distribution":true}'


def _tail(warnings: list[dict[str, str]], ood: bool) -> bytes:
    return b'},"warnings":%b,"out_of_distribution":%b}' % (orjson.dumps(warnings), b"true" if ood else b"false")


def _tails(ood: list[bool], runs: list[WarningRun], n: int) -> list[bytes]:
    """Each row's end of answer: ``},"warnings":[...],"out_of_distribution":..}``.

    Run by run with C-level passes for the rows whose warnings come from one run (nearly all: one input's
    warnings); the few rows with warnings from several runs are then rewritten row by row."""
    tails = [_PLAIN_TAIL] * n
    flags = np.asarray(ood, dtype=bool)
    for i in np.flatnonzero(flags).tolist():  # flagged rows come with a warning (rewritten below), but be exact
        tails[i] = _FLAGGED_TAIL
    runs = [run for run in runs if run[0]]
    if not runs:
        return tails
    if len(runs) == 1 and len(set(runs[0][0])) == len(runs[0][0]):
        several: list[int] = []
    else:
        counts = np.bincount(np.fromiter(chain.from_iterable(rows for rows, _ in runs), dtype=np.intp), minlength=n)
        several = np.flatnonzero(counts > 1).tolist()
    for rows, warnings in runs:
        ids = list(map(id, warnings))
        by_id = dict(zip(ids, warnings, strict=True))  # the same few warning objects recur
        run_flags = flags[rows]
        if run_flags.min() == run_flags.max():
            flag = bool(run_flags[0])
            tail_of = {key: _tail([warning.as_dict()], flag) for key, warning in by_id.items()}
            deque(map(tails.__setitem__, rows, map(tail_of.__getitem__, ids)), maxlen=0)
        else:
            for i, warning in zip(rows, warnings, strict=True):
                tails[i] = _tail([warning.as_dict()], ood[i])
    if several:
        wanted = set(several)
        by_row: dict[int, list[InputWarning]] = {i: [] for i in several}
        for rows, warnings in runs:
            for i, warning in zip(rows, warnings, strict=True):
                if i in wanted:
                    by_row[i].append(warning)
        for i, row_warnings in by_row.items():
            tails[i] = _tail([w.as_dict() for w in row_warnings], ood[i])
    return tails
