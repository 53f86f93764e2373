"""Offline checks of the deployment assets: Dockerfile (hadolint + rules), Kubernetes manifests
(kubernetes-validate, security context, probes, shutdown timing), Cloud Run service, yamllint, and the
monitoring assets (promtool when installed; metric names must exist in the service)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
BIN = Path(sys.executable).parent
METRICS_SOURCE = REPO / "src" / "tabserve" / "observability" / "metrics.py"
COVERAGE_SOURCE = REPO / "src" / "tabserve" / "observability" / "coverage.py"
ALERTS = DEPLOY / "monitoring" / "alerts.yaml"
DASHBOARD = DEPLOY / "monitoring" / "grafana-dashboard.json"
PROMTOOL = shutil.which("promtool")
NO_PROMTOOL = "promtool not installed (Debian package `prometheus`; deploy/container-test.sh installs it)"


def _tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} missing from the venv (dev requirements)")
    return str(path)


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def _k8s(kind: str) -> dict[str, Any]:
    for path in sorted(K8S.glob("*.yaml")):
        for doc in _docs(path):
            if doc["kind"] == kind:
                return doc
    raise AssertionError(f"no {kind} under {K8S}")


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


# ---- Dockerfile


def test_dockerfile_hadolint_clean_when_linted() -> None:
    result = subprocess.run([_tool("hadolint"), "Dockerfile"], cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_non_root_exec_form_when_built() -> None:
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    instructions = [line for line in text.splitlines() if line and not line.startswith("#")]
    froms = [line.split()[1] for line in instructions if line.startswith("FROM ")]
    assert froms[0] == "python:3.12-slim"
    assert set(froms) <= {"python:3.12-slim", "scratch"}
    assert len(froms) >= 2, "multi-stage build expected"
    users = [line for line in instructions if line.startswith("USER ")]
    assert users == ["USER 10001:10001"]
    entrypoint = next(line for line in instructions if line.startswith("ENTRYPOINT "))
    assert json.loads(entrypoint.removeprefix("ENTRYPOINT ")) == ["tabserve", "serve"]
    assert "--require-hashes" in text
    assert "requirements/serve.txt" in text
    assert "tabserve verify /app/models" in text
    health = text[text.index("HEALTHCHECK") :]
    assert "/health" in health.split("\n\n")[0]
    assert not re.search(r"^\s*ARG\s", text, re.MULTILINE), "no build args: nothing secret can enter a layer"
    assert "curl" not in text


def test_dockerignore_keeps_tests_and_venv_out_when_building() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "allow-list: everything is excluded first"
    allowed = [line[1:] for line in lines if line.startswith("!")]
    for never in ("tests", ".venv", ".git", "bench", "docs"):
        assert not any(a == never or a.startswith(f"{never}/") for a in allowed), never
    for needed in ("requirements/serve.txt", "src/", "models/", "pyproject.toml"):
        assert needed in allowed


# ---- Kubernetes


@pytest.mark.parametrize("version", ["1.30.0", "1.37.0"])
def test_k8s_manifests_validate_when_checked_offline(version: str) -> None:
    files = sorted(str(p) for p in K8S.glob("*.yaml"))
    assert len(files) >= 6
    result = subprocess.run(
        [_tool("kubernetes-validate"), "--strict", "--quiet", "-k", version, *files],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_k8s_validation_fails_when_a_field_is_misspelt(tmp_path: Path) -> None:
    doc = _k8s("Deployment")
    doc["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/ready", "port": 8080}}
    bad = tmp_path / "deployment.yaml"
    bad.write_text(yaml.safe_dump(doc), encoding="utf-8")
    result = subprocess.run(
        [_tool("kubernetes-validate"), "--strict", "--quiet", str(bad)], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "readinesProbe" in result.stdout + result.stderr


def test_k8s_deployment_locked_down_when_rendered() -> None:
    pod = _k8s("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["runAsUser"] == 10001
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {
        "/tmp",
        _env(container)["TABSERVE_DATA_DIR"]["value"],
    }
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    assert limits["memory"] == requests["memory"], "memory request = limit: no overcommit, predictable OOM"


def test_k8s_probes_and_shutdown_timing_match_the_server() -> None:
    pod = _k8s("Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["startupProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    grace = float(_env(container)["TABSERVE_SHUTDOWN_GRACE_S"]["value"])
    assert grace == 10.0
    assert pod["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + grace
    store = _env(container)["TABSERVE_STORE_URL"]
    assert "secretKeyRef" in store["valueFrom"]
    assert "value" not in store


def test_k8s_hpa_pdb_service_target_the_deployment() -> None:
    labels = _k8s("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert _k8s("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"] == "tabserve"
    assert _k8s("HorizontalPodAutoscaler")["spec"]["minReplicas"] >= 2
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        selector = _k8s(kind)["spec"].get("selector") or _k8s(kind)["spec"]["podSelector"]
        assert selector["matchLabels"].items() <= labels.items(), kind
    assert _k8s("Service")["spec"]["selector"].items() <= labels.items()


# ---- Cloud Run


def test_cloudrun_service_takes_store_url_from_secret_manager() -> None:
    (service,) = _docs(DEPLOY / "cloudrun" / "service.yaml")
    assert service["apiVersion"] == "serving.knative.dev/v1"
    template = service["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["run.googleapis.com/startup-cpu-boost"] == "true"
    assert int(annotations["autoscaling.knative.dev/minScale"]) >= 1
    assert int(annotations["autoscaling.knative.dev/maxScale"]) > int(annotations["autoscaling.knative.dev/minScale"])
    spec = template["spec"]
    assert spec["serviceAccountName"].endswith(".iam.gserviceaccount.com")
    (container,) = spec["containers"]
    env = _env(container)
    assert "PORT" not in env, "PORT is reserved by Cloud Run"
    assert env["TABSERVE_STORE_URL"]["valueFrom"]["secretKeyRef"]["key"] == "latest"
    assert "postgresql://" not in json.dumps(env), "no literal store URL"
    assert int(env["TABSERVE_MAX_IN_FLIGHT"]["value"]) == spec["containerConcurrency"]
    assert float(env["TABSERVE_SHUTDOWN_GRACE_S"]["value"]) < 10, "Cloud Run kills 10 s after SIGTERM"
    assert container["startupProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"


def test_yaml_assets_lint_clean_when_checked() -> None:
    result = subprocess.run(
        [_tool("yamllint"), "--strict", "deploy", ".yamllint"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ---- monitoring


def _service_metric_names() -> set[str]:
    sources = METRICS_SOURCE.read_text(encoding="utf-8") + COVERAGE_SOURCE.read_text(encoding="utf-8")
    declared = set(re.findall(r'"(tabserve_[a-z0-9_]+)"', sources))
    assert declared, f"no metric names found in {METRICS_SOURCE}"
    names = set(declared)
    for name in declared:  # histogram series
        names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def _alert_exprs() -> list[str]:
    (doc,) = _docs(ALERTS)
    return [rule["expr"] for group in doc["groups"] for rule in group["rules"]]


def test_monitoring_uses_only_metrics_the_service_exports() -> None:
    exported = _service_metric_names()
    used: set[str] = set()
    for expr in _alert_exprs() + _dashboard_exprs():
        used |= set(re.findall(r"\b(tabserve_[a-z0-9_]+)", expr))
    assert used, "no tabserve metric used"
    assert used <= exported, f"unknown metrics: {sorted(used - exported)}"


def test_alerts_cover_the_slos_when_loaded() -> None:
    (doc,) = _docs(ALERTS)
    alerts = {rule["alert"]: rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule}
    text = json.dumps(doc)  # alert expressions use the recording rules beside them
    for needle in ('status=~\\"5..\\"', "histogram_quantile(0.99", "tabserve_drift_psi_score", "spilled", "up{"):
        assert needle in text, needle
    for rule in alerts.values():
        assert rule["labels"]["severity"] in {"page", "ticket"}
        assert rule["annotations"]["summary"]


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_alert_rules_pass_promtool_when_checked() -> None:
    result = subprocess.run([str(PROMTOOL), "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_coverage_alert_fires_only_out_of_band_with_enough_samples_when_unit_tested() -> None:
    tests = ALERTS.with_name("alerts_test.yaml")
    result = subprocess.run([str(PROMTOOL), "test", "rules", str(tests)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_dashboard_queries_parse_when_checked_by_promtool(tmp_path: Path) -> None:
    rules = [
        {"record": f"dashboard:query_{i}", "expr": expr.replace("$__rate_interval", "5m").replace("$job", ".*")}
        for i, expr in enumerate(_dashboard_exprs())
    ]
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    result = subprocess.run([str(PROMTOOL), "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "script",
    ["deploy/container-test.sh", "deploy/cloudrun/bluegreen.sh", "deploy/measure-build.sh", "deploy/slim-venv.sh"],
)
def test_deploy_script_parses_when_checked_by_bash(script: str) -> None:
    result = subprocess.run(["bash", "-n", str(REPO / script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert (REPO / script).read_text(encoding="utf-8").startswith("#!/bin/")
