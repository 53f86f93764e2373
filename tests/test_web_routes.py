"""The web page's routes in process: pages and static files under the strict CSP, the operations summary equal to
what /metrics exports (and behind the admin credential once configured), the model card rendered safely from
verified files only. The page itself in a real browser: tests/test_web_browser.py."""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from conftest import MODELS
from tabserve.api.routes_web import STATIC_DIR
from tabserve.artifacts import list_versions
from tabserve.observability.summary import histogram_quantile, operations_summary

STRICT = {
    "default-src": "'none'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self'",
    "connect-src": "'self'",
    "frame-ancestors": "'none'",
    "base-uri": "'none'",
    "form-action": "'none'",
}


def _csp(header: str) -> dict[str, str]:
    return dict(part.strip().split(" ", 1) for part in header.split(";") if part.strip())


@pytest.mark.parametrize("path", ["/", "/operations", "/models/co2/card", "/models/penguins/card", "/docs"])
def test_html_pages_get_the_strict_csp(client: TestClient, path: str) -> None:
    page = client.get(path)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert _csp(page.headers["content-security-policy"]) == STRICT
    assert page.headers["x-frame-options"] == "DENY"
    assert not re.search(r"<script(?![^>]*\bsrc=)", page.text), "no inline script"
    assert not re.search(r"<style|\sstyle=|\son[a-z]+=", page.text), "no inline style or handler"
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text), "nothing from another origin"
    for ref in re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text):
        assert client.get(ref).status_code == 200, ref


def test_static_files_need_no_eval_and_no_other_origin() -> None:
    for path in STATIC_DIR.iterdir():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"\beval\(|new Function|setTimeout\(\s*['\"]|innerHTML|outerHTML|document\.write", text), (
            path
        )
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text), path


def test_first_load_files_stay_small() -> None:
    """The page weight budget is measured in the browser (test_web_browser); this keeps the files honest."""
    first_load = ["index.html", "web.css", "common.js", "app.js", "icon.svg"]
    assert sum((STATIC_DIR / name).stat().st_size for name in first_load) < 100_000


def test_static_route_serves_only_the_package_files(client: TestClient) -> None:
    ok = client.get("/static/app.js")
    assert ok.status_code == 200 and ok.headers["content-type"].startswith("text/javascript")
    assert ok.headers["x-content-type-options"] == "nosniff"
    again = client.get("/static/app.js", headers={"if-none-match": ok.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    for path in ["/static/index.html", "/static/nope.js", "/static/..%2Fapp.py", "/static/%2e%2e%2fauth.py"]:
        assert client.get(path).status_code == 404, path
    assert client.get("/static/../app.py").status_code == 404


def _summary(client: TestClient) -> dict[str, Any]:
    response = client.get("/operations/summary")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _series(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for match in re.finditer(rf"^{name}\{{(.*)\}} (\S+)$", text, flags=re.MULTILINE):
        out.append((dict(re.findall(r'(\w+)="([^"]*)"', match.group(1))), float(match.group(2))))
    return out


def test_summary_is_what_metrics_exports(client: TestClient) -> None:
    example = client.get("/models/co2").json()["example_request"]
    for size in (1.5, 2.0, 3.5, 5.0):
        assert client.post("/models/co2/predict", json=example | {"engine_size_l": size}).status_code == 200
    assert client.post("/models/co2/predict", json=example | {"engine_size_l": 99}).status_code == 422
    penguin = client.get("/models/penguins").json()["example_request"]
    assert client.post("/models/penguins/predict", json=penguin).status_code == 200
    summary = _summary(client)
    text = client.get("/metrics").text
    predict = [
        (labels, v) for labels, v in _series(text, "tabserve_requests_total") if labels["route"].endswith("/predict")
    ]
    assert summary["requests"]["prediction_total"] == sum(v for _, v in predict) == 6
    assert summary["requests"]["prediction_by_status"] == {"200": 5, "422": 1}
    assert summary["requests"]["prediction_by_model"]["co2"] == {"200": 4, "422": 1}
    assert summary["latency_seconds"]["count"] == 6
    assert summary["predictions"]["co2"]["count"] == 4 and summary["predictions"]["co2"]["task"] == "regression"
    assert summary["predictions"]["penguins"] == {"task": "classification", "classes": {"Adelie": 1}, "count": 1}
    drift = {(labels["model"], labels["feature"]): v for labels, v in _series(text, "tabserve_drift_psi_score")}
    flat = {(m, f): v for m, features in summary["drift_psi"].items() for f, v in features.items()}
    assert flat == drift and ("co2", "engine_size_l") in flat
    assert [m["name"] for m in summary["models"]] == ["co2", "penguins"]
    assert summary["drift_window"]["co2"] == {"rows": 4, "min_rows": 500, "status": "insufficient_data"}
    assert summary["coverage"] == [] and summary["coverage_min_samples"] == 200


def test_histogram_quantile_follows_prometheus() -> None:
    buckets = [(0.1, 0.0), (0.5, 10.0), (1.0, 20.0), (math.inf, 20.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.5)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.3)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.99)
    assert histogram_quantile(0.5, [(1.0, 0.0), (math.inf, 0.0)]) is None
    assert histogram_quantile(0.9, [(1.0, 1.0), (math.inf, 10.0)]) == 1.0, "rank in +Inf: the highest bound"


def test_summary_of_a_multiprocess_style_exposition() -> None:
    text = "\n".join(
        [
            "# TYPE tabserve_requests_total counter",
            'tabserve_requests_total{model="co2",route="/predict",status="200"} 3.0',
            'tabserve_requests_total{model="",route="unmatched",status="503"} 2.0',
            'tabserve_requests_total{model="co2",route="/v2/models/{name}/infer",status="429"} 1.0',
            "# TYPE tabserve_coverage_ratio gauge",
            'tabserve_coverage_ratio{level="0.9",model="co2",pattern="111",version="2.0.0"} 0.91',
            "# TYPE tabserve_coverage_samples gauge",
            'tabserve_coverage_samples{level="0.9",model="co2",pattern="111",version="2.0.0"} 300.0',
            'tabserve_coverage_samples{level="0.9",model="co2",pattern="000",version="2.0.0"} 0.0',
            "",
        ]
    )
    summary = operations_summary(text, now=5.0)
    assert summary["requests"]["by_status"] == {"200": 3, "429": 1, "503": 2}
    assert summary["requests"]["prediction_total"] == 4
    assert summary["coverage"] == [
        {"model": "co2", "version": "2.0.0", "level": 0.9, "pattern": "111", "coverage": 0.91, "samples": 300.0}
    ]
    assert summary["time"] == 5.0


def test_summary_needs_the_admin_scope_once_configured(make_client: Callable[..., TestClient]) -> None:
    token = "web-admin-token-0123456789abcdef0123"
    client = make_client(admin_token=token)
    assert client.get("/operations/summary").status_code == 401
    assert client.get("/operations/summary", headers={"Authorization": "Bearer wrong-token"}).status_code == 401
    assert client.get("/operations/summary", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert client.get("/operations").status_code == 200, "the page holds no data: it asks for the token"
    operation = client.get("/openapi.json").json()["paths"]["/operations/summary"]["get"]
    assert operation["security"] and {"401", "403", "200"} <= set(operation["responses"])


def test_openapi_documents_the_summary_and_leaves_pages_out(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/operations/summary" in paths
    schema = paths["/operations/summary"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert set(schema["required"]) == set(_summary(client))
    for page in ["/", "/operations", "/static/{file}", "/models/{name}/card", "/models/{name}/card/{file}"]:
        assert page not in paths


def test_card_page_renders_markdown_with_its_plots(client: TestClient) -> None:
    page = client.get("/models/co2/card")
    newest = list_versions(MODELS, "co2")[-1]
    assert f"<h1>co2 {newest}" in page.text and "<table>" in page.text and 'role="region"' in page.text
    plots = re.findall(r'<img src="([^"]+)" alt="[^"]+"', page.text)
    assert len(plots) == len(re.findall(r"!\[[^]]*\]\(", (MODELS / "co2" / newest / "MODEL_CARD.md").read_text()))
    assert len(plots) >= 3
    for src in plots:
        image = client.get(src)
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        assert "sandbox" in image.headers["content-security-policy"]
        manifest = json.loads((MODELS / "co2" / newest / "manifest.json").read_text())
        assert hashlib.sha256(image.content).hexdigest() == manifest["files"][src.rsplit("/", 1)[1]]


@pytest.mark.parametrize(
    "file", ["model.onnx", "manifest.json", "MODEL_CARD.md", "nope.png", "..%2Fpenguins%2F1.0.0%2Freliability.png"]
)
def test_card_files_are_only_listed_plots(client: TestClient, file: str) -> None:
    assert client.get(f"/models/co2/card/{file}").status_code == 404


def _copy_model(tmp_path: Path, name: str = "penguins", version: str = "1.0.0") -> Path:
    root = tmp_path / "models"
    shutil.copytree(MODELS / name / version, root / name / version)
    return root


def _reseal(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    for name in manifest["files"]:
        manifest["files"][name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_card_markdown_cannot_inject_html_or_script(make_client: Callable[..., TestClient], tmp_path: Path) -> None:
    root = _copy_model(tmp_path)
    folder = root / "penguins" / "1.0.0"
    hostile = (
        "# Card <script>alert(1)</script>\n\n<img src=x onerror=alert(2)>\n\n"
        "[click](javascript:alert(3)) ![remote](https://evil.example/x.png) ![local](reliability.png)\n"
    )
    (folder / "MODEL_CARD.md").write_text(hostile)
    _reseal(folder)
    client = make_client(models_dir=root)
    page = client.get("/models/penguins/card").text
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<img src=x" not in page and 'href="javascript:' not in page and "<a " not in page.split("</nav>")[1]
    assert "evil.example" not in page and "<em>[remote]</em>" in page
    assert '<img src="/models/penguins/card/reliability.png" alt="local"' in page


def test_a_tampered_card_or_plot_is_refused(make_client: Callable[..., TestClient], tmp_path: Path) -> None:
    root = _copy_model(tmp_path)
    client = make_client(models_dir=root)
    folder = root / "penguins" / "1.0.0"
    assert client.get("/models/penguins/card/reliability.png").status_code == 200
    (folder / "reliability.png").write_bytes(b"\x89PNG tampered")
    (folder / "MODEL_CARD.md").write_text("# tampered")
    for path in ["/models/penguins/card/reliability.png", "/models/penguins/card"]:
        response = client.get(path)
        assert response.status_code == 422 and "sha256 mismatch" in response.json()["detail"], path


def test_unknown_model_card_is_404(client: TestClient) -> None:
    assert client.get("/models/nope/card").status_code == 404
    assert client.get("/models/nope/card/x.png").status_code == 404


def _feedback(client: TestClient, request_id: str, actual: float | str) -> None:
    deadline = time.monotonic() + 5.0
    while True:  # the log writer commits in batches: a just-served row may not be there yet
        response = client.post("/feedback", json={"request_id": request_id, "actual": actual})
        if response.status_code != 404 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert response.status_code == 200, response.text


def test_summary_coverage_cells_are_the_coverage_gauges(make_client: Callable[..., TestClient]) -> None:
    client = make_client(coverage_refresh_s=0)
    example = client.get("/models/penguins").json()["example_request"]
    for mass in range(3000, 4000, 100):
        answer = client.post("/models/penguins/predict", json=example | {"body_mass_g": mass}).json()
        _feedback(client, answer["request_id"], "Adelie" if mass < 3700 else "Gentoo")
    report = client.get("/models/penguins/coverage").json()  # computes the cells and sets the gauges
    cells = {(c["version"], c["level"], c["pattern"]): c for c in report["cells"]}
    summary = _summary(client)["coverage"]
    assert summary and {(c["version"], c["level"], c["pattern"]) for c in summary} == set(cells)
    for shown in summary:
        cell = cells[(shown["version"], shown["level"], shown["pattern"])]
        assert shown["model"] == "penguins"
        assert (shown["samples"], shown["covered"], shown["coverage"]) == (
            cell["samples"],
            cell["covered"],
            cell["coverage"],
        )
        assert [shown["wilson_lower"], shown["wilson_upper"]] == cell["wilson"]
        assert [shown["band_lower"], shown["band_upper"]] == cell["band"]
