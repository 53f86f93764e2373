"""Security properties: no pickle at serve time, URLs cannot leave the models folder, browser headers, no CORS,
no server banner, and the uvicorn internals the shedding protocol relies on."""

from __future__ import annotations

import pickle
import re
import shutil
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from uvicorn.protocols.http import httptools_impl

from conftest import MODELS, REPO
from tabserve.artifacts import verify_model_dir
from tabserve.errors import ManifestError, TabserveError


class Planted:
    """Unpickling this writes a marker file: the proof that a pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (self.marker, "executed"))  # type: ignore[return-value]


@pytest.mark.parametrize("name", ["model.pkl", "weights.joblib", "innocent.bin"])
def test_a_pickle_planted_in_a_model_folder_is_refused_never_executed(tmp_path: Path, name: str) -> None:
    models = tmp_path / "models"
    shutil.copytree(MODELS / "penguins", models / "penguins")
    marker = tmp_path / "marker"
    (models / "penguins" / "1.1.0" / name).write_bytes(pickle.dumps(Planted(marker), protocol=4))
    with pytest.raises(ManifestError, match="pickle"):
        verify_model_dir(models / "penguins" / "1.1.0")
    assert not marker.exists()


def test_a_service_with_a_planted_pickle_refuses_to_start(make_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    models = tmp_path / "models"
    shutil.copytree(MODELS / "penguins", models / "penguins")
    marker = tmp_path / "marker"
    (models / "penguins" / "1.1.0" / "model.pkl").write_bytes(pickle.dumps(Planted(marker)))
    with pytest.raises(TabserveError, match=r"model\.pkl: a pickle file"):
        make_client(models_dir=models, default_model="penguins")
    assert not marker.exists()


@pytest.mark.parametrize(
    "path",
    [
        "/models/..%2f..%2fetc/versions/passwd",
        "/models/%2e%2e/versions/1.0.0",
        "/models/penguins/versions/..%2f..%2f..%2fetc",
        "/models/penguins/versions/%2e%2e",
        "/models/penguins/versions/%2Fetc%2Fpasswd",
        "/models/%2Fetc/versions/1.0.0",
        "/v2/models/..%2fpenguins/versions/1.0.0",
        "/v2/models/penguins/versions/..%2f1.0.0/ready",
        "/models/..%5c..%5cwindows/versions/1",
    ],
)
def test_model_names_and_versions_from_urls_cannot_leave_the_models_dir(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404, response.text


def test_html_gets_security_headers_and_docs_load_nothing_from_elsewhere(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert not re.search(r"""(src|href)=["']?https?://""", page.text), "no CDN or other origin"
    assert "/models/{name}/predict" in page.text or "/models/penguins/predict" in page.text
    assert client.get("/redoc").status_code == 404
    assert client.get("/models").headers["x-content-type-options"] == "nosniff"


def test_cors_is_off_and_there_is_no_server_banner(client: TestClient) -> None:
    response = client.options(
        "/models", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
    )
    assert "access-control-allow-origin" not in response.headers
    get = client.get("/models", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in get.headers
    assert "server" not in get.headers
    cli = (REPO / "src" / "tabserve" / "cli.py").read_text()
    assert '"server_header": False' in cli


def test_uvicorn_is_inside_the_pinned_range_and_has_what_shedding_uses() -> None:
    """api/shedding.py subclasses uvicorn's httptools protocol and reads its cycle's fields: an upgrade outside
    the range it was written for, or one that renames what it uses, fails here (loudly, not a silent fallback)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    spec = next(d for d in project["project"]["dependencies"] if d.startswith("uvicorn"))
    low, high = re.findall(r"[<>]=?\s*([0-9.]+)", spec)
    installed = tuple(int(x) for x in version("uvicorn").split(".")[:2])
    assert tuple(int(x) for x in low.split(".")[:2]) <= installed < tuple(int(x) for x in high.split(".")[:2])
    protocol = httptools_impl.HttpToolsProtocol
    for name in ("on_message_begin", "on_headers_complete", "on_body", "on_message_complete", "on_response_complete"):
        assert callable(getattr(protocol, name)), name
    assert hasattr(httptools_impl, "STATUS_LINE") and 503 in httptools_impl.STATUS_LINE
    cycle_fields = {"keep_alive", "more_body", "waiting_for_100_continue", "response_complete", "transport", "scope"}
    init = httptools_impl.RequestResponseCycle.__init__.__code__
    assigned = set(init.co_names)
    assert cycle_fields <= assigned, cycle_fields - assigned
    protocol_fields = {"flow", "parser", "pipeline", "server_state", "cycle", "tasks", "timeout_keep_alive_task"}
    assert protocol_fields <= set(protocol.__init__.__code__.co_names), protocol_fields - set(
        protocol.__init__.__code__.co_names
    )
