"""API keys (api/auth.py) through the whole app: salted hashes only in configuration, constant-time checks,
401 (with WWW-Authenticate) vs 403, optional vs required keys, admin routes, the rate limiter keyed on the
authenticated key, production mode refusing to start open, the OpenAPI security schemes, keys never logged;
and ``tabserve hash-key`` / ``tabserve serve`` as a user runs them."""

from __future__ import annotations

import hmac
import json
import logging
import os
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from conftest import MODELS, REPO, TABSERVE
from tabserve.api import auth
from tabserve.api.auth import Authenticator, hash_key, key_entry, parse_keys
from tabserve.cli import main
from tabserve.config import Settings
from tabserve.errors import ConfigurationError

PREDICT_KEY = "predict-key-0123456789abcdefghij"
ADMIN_KEY = "admin-key-0123456789abcdefghijklmn"
OTHER_KEY = "other-key-0123456789abcdefghijklmn"
KEYS = ",".join(
    [key_entry("app", frozenset({"predict"}), PREDICT_KEY), key_entry("ops", frozenset({"admin"}), ADMIN_KEY)]
)
Factory = Callable[..., TestClient]


@pytest.fixture
def example() -> dict[str, Any]:
    request: dict[str, Any] = json.loads((REPO / "tests" / "golden" / "co2-single.json").read_text())["request"]
    return request


def test_configuration_holds_salted_hashes_only() -> None:
    one, two = hash_key(PREDICT_KEY), hash_key(PREDICT_KEY)
    assert one != two and PREDICT_KEY not in one  # a fresh salt each time, never the key
    (stored,) = parse_keys(key_entry("app", frozenset({"predict"}), PREDICT_KEY))
    assert stored.name == "app" and stored.scopes == {"predict"} and len(stored.digest) == 32
    keys = Authenticator(parse_keys(KEYS))
    assert keys.identify(None, PREDICT_KEY) == auth.Principal("app", frozenset({"predict"}))
    assert keys.identify(f"Bearer {ADMIN_KEY}", None) == auth.Principal("ops", frozenset({"admin"}))
    assert keys.identify(None, PREDICT_KEY[:-1] + "X") is auth.INVALID
    assert keys.identify(f"Basic {PREDICT_KEY}", None) is auth.INVALID
    assert keys.identify(None, None) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("app:predict:" + PREDICT_KEY, "not a key hash"),  # the key itself instead of its hash
        ("app:predict:sha256.00.11", "not a key hash"),
        ("app:root:" + hash_key(PREDICT_KEY), "scopes are some of"),
        ("a b:predict:" + hash_key(PREDICT_KEY), "key name"),
        (f"app:predict:{hash_key(PREDICT_KEY)},app:admin:{hash_key(ADMIN_KEY)}", "used twice"),
    ],
)
def test_bad_key_entries_are_refused_without_echoing_them(text: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as caught:
        parse_keys(text)
    assert PREDICT_KEY not in caught.value.detail and text.split(":")[2] not in caught.value.detail
    with pytest.raises(ConfigurationError, match="at least 24"):
        hash_key("short")


def test_keys_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    keys = Authenticator(parse_keys(KEYS))
    assert keys.identify(None, PREDICT_KEY) is not None  # the first entry matches: the second is compared too
    assert len(calls) == 2


def test_predict_keys_are_optional_by_default(make_client: Factory, example: dict[str, Any]) -> None:
    client = make_client(api_keys=KEYS)
    assert client.post("/predict", json=example["body"]).status_code == 200
    assert client.post("/predict", json=example["body"], headers={"X-API-Key": PREDICT_KEY}).status_code == 200
    wrong = client.post("/predict", json=example["body"], headers={"X-API-Key": OTHER_KEY})
    assert wrong.status_code == 401  # a presented key must be valid
    assert wrong.headers["www-authenticate"] == 'Bearer realm="tabserve", error="invalid_token"'
    assert wrong.headers["content-type"] == "application/problem+json"
    assert wrong.json()["status"] == 401 and OTHER_KEY not in wrong.text


def test_required_predict_keys_answer_401_then_403_then_200(make_client: Factory, example: dict[str, Any]) -> None:
    client = make_client(api_keys=KEYS, require_api_key=True)
    missing = client.post("/predict", json=example["body"])
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == 'Bearer realm="tabserve"'
    assert "predict" in missing.json()["detail"]
    admin_only = client.post("/predict", json=example["body"], headers={"X-API-Key": ADMIN_KEY})
    assert admin_only.status_code == 403 and "www-authenticate" not in admin_only.headers
    assert admin_only.json()["detail"] == "the key 'ops' does not have the 'predict' scope"
    good = client.post("/models/co2/predict", json=example["body"], headers={"Authorization": f"Bearer {PREDICT_KEY}"})
    assert good.status_code == 200
    assert client.post("/feedback", json={"request_id": "x", "actual": 1.0}).status_code == 401
    infer = client.post("/v2/models/co2/infer", json={"inputs": []})
    assert infer.status_code == 401 and infer.json() == {
        "error": "this route needs an API key with the 'predict' scope"
    }
    assert client.get("/models").status_code == 200  # metadata, probes: no credential
    assert client.get("/ready").status_code == 200


def test_admin_routes_need_the_admin_scope(make_client: Factory) -> None:
    client = make_client(api_keys=KEYS)
    body = {"model": "co2"}
    assert client.post("/admin/reload", json=body).status_code == 401
    assert client.post("/admin/reload", json=body, headers={"X-API-Key": PREDICT_KEY}).status_code == 403
    assert client.post("/admin/reload", json=body, headers={"X-API-Key": OTHER_KEY}).status_code == 401
    done = client.post("/admin/reload", json=body, headers={"X-API-Key": ADMIN_KEY})
    assert done.status_code == 200 and done.json()["status"] == "ready"
    for view in ("/models/co2/drift", "/models/co2/coverage"):
        assert client.get(view).status_code == 401
        assert client.get(view, headers={"X-API-Key": PREDICT_KEY}).status_code == 403
        assert client.get(view, headers={"Authorization": f"Bearer {ADMIN_KEY}"}).status_code == 200


def test_without_an_admin_credential_reload_is_disabled(make_client: Factory) -> None:
    client = make_client(api_keys=key_entry("app", frozenset({"predict"}), PREDICT_KEY))
    assert client.post("/admin/reload", json={"model": "co2"}, headers={"X-API-Key": PREDICT_KEY}).status_code == 404
    assert client.get("/models/co2/drift").status_code == 200  # development: the views are open


def test_the_admin_token_may_be_a_hash_or_plain_text(make_client: Factory) -> None:
    for token in (hash_key(ADMIN_KEY), ADMIN_KEY):
        client = make_client(admin_token=token)
        assert client.post("/admin/reload", json={"model": "co2"}).status_code == 401
        ok = client.post("/admin/reload", json={"model": "co2"}, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        assert ok.status_code == 200


def test_the_rate_limiter_keys_on_the_authenticated_key(make_client: Factory, example: dict[str, Any]) -> None:
    client = make_client(api_keys=KEYS, rate_limit=0.001, rate_limit_burst=2)
    statuses = [client.post("/predict", json=example["body"]).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]  # the address's bucket is empty
    keyed = [client.post("/predict", json=example["body"], headers={"X-API-Key": PREDICT_KEY}) for _ in range(3)]
    assert [r.status_code for r in keyed] == [200, 200, 429]  # the key has its own bucket
    # random keys do not buy fresh buckets: an invalid key counts against the address (already empty)
    assert client.post("/predict", json=example["body"], headers={"X-API-Key": OTHER_KEY}).status_code == 429


def test_keys_are_never_logged(make_client: Factory, example: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    client = make_client(api_keys=KEYS, access_log=True, log_level="DEBUG")
    with caplog.at_level(logging.DEBUG):
        client.post("/predict", json=example["body"], headers={"X-API-Key": PREDICT_KEY})
        client.post("/predict", json=example["body"], headers={"X-API-Key": OTHER_KEY})
        client.post("/admin/reload", json={"model": "co2"}, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    text = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    assert caplog.records and all(k not in text for k in (PREDICT_KEY, OTHER_KEY, ADMIN_KEY))
    assert all(stored.digest.hex() not in text for stored in parse_keys(KEYS))
    assert "sha256." not in repr(Settings(api_keys=KEYS))  # a SecretStr: hidden in reprs and tracebacks


def test_the_openapi_document_declares_what_is_enforced(make_client: Factory) -> None:
    optional = make_client().get("/openapi.json").json()
    assert optional["components"]["securitySchemes"]["apiKey"] == auth.SECURITY_SCHEMES["apiKey"]
    assert optional["paths"]["/predict"]["post"]["security"] == [{}, {"apiKey": []}, {"bearer": []}]
    assert optional["paths"]["/admin/reload"]["post"]["security"] == [{"apiKey": []}, {"bearer": []}]
    assert "security" not in optional["paths"]["/models/{name}/drift"]["get"]  # open until an admin key exists
    assert "security" not in optional["paths"]["/models"]["get"]
    assert {"401", "403"} <= set(optional["paths"]["/predict"]["post"]["responses"])
    required = make_client(api_keys=KEYS, require_api_key=True).get("/openapi.json").json()
    assert required["paths"]["/feedback"]["post"]["security"] == [{"apiKey": []}, {"bearer": []}]
    assert required["paths"]["/models/{name}/coverage"]["get"]["security"] == [{"apiKey": []}, {"bearer": []}]
    assert required["paths"]["/v2/models/co2/infer"]["post"]["security"] == [{"apiKey": []}, {"bearer": []}]


def test_production_mode_refuses_open_admin_routes(tmp_path: Any) -> None:
    base = {"models_dir": MODELS, "data_dir": tmp_path, "production": True}
    with pytest.raises(ConfigurationError, match="admin routes are open"):
        auth.check_production(Settings(**base))
    with pytest.raises(ConfigurationError, match="plain text"):
        auth.check_production(Settings(**base, admin_token=ADMIN_KEY))
    auth.check_production(Settings(**base, admin_token=hash_key(ADMIN_KEY)))
    auth.check_production(Settings(**base, api_keys=KEYS))
    auth.check_production(Settings(models_dir=MODELS, data_dir=tmp_path))  # not production: anything goes


def test_serve_in_production_mode_exits_1_naming_the_reason(tmp_path: Any) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TABSERVE_")}
    env |= {"TABSERVE_PRODUCTION": "true", "TABSERVE_MODELS_DIR": str(MODELS), "TABSERVE_DATA_DIR": str(tmp_path)}
    result = subprocess.run([str(TABSERVE), "serve"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert "TABSERVE_PRODUCTION=true refuses to start: the admin routes are open" in result.stderr


def test_hash_key_prints_a_key_and_entries_that_work(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hash-key", "--name", "ci", "--scopes", "predict,admin"]) == 0
    lines = dict(line.split(":", 1) for line in capsys.readouterr().out.splitlines())
    key, hashed, entry = (lines[k].strip() for k in ("key", "hash", "entry"))
    assert len(key) >= 40 and key not in hashed and key not in entry
    (stored,) = parse_keys(entry)
    assert (stored.name, stored.scopes) == ("ci", {"predict", "admin"})
    assert Authenticator(parse_keys(entry)).identify(None, key) == auth.Principal("ci", stored.scopes)
    admin = Authenticator.from_settings(Settings(admin_token=hashed))
    assert admin.identify(f"Bearer {key}", None) == auth.Principal(auth.ADMIN_TOKEN_NAME, frozenset({"admin"}))


def test_hash_key_reads_a_given_key_from_stdin() -> None:
    result = subprocess.run(
        [str(TABSERVE), "hash-key", "--stdin", "--name", "x"], input=PREDICT_KEY + "\n", capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0 and PREDICT_KEY not in result.stdout
    entry = result.stdout.split("entry:", 1)[1].strip()
    assert Authenticator(parse_keys(entry)).identify(None, PREDICT_KEY) is not auth.INVALID
    short = subprocess.run(
        [str(TABSERVE), "hash-key", "--stdin"], input="abc\n", capture_output=True, text=True, timeout=60, check=False
    )
    assert short.returncode == 1 and "at least 24" in short.stderr
