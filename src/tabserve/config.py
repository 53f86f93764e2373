"""Settings: the only place configuration is read (pydantic-settings, ``TABSERVE_`` prefix, plus ``PORT``).

Every field has a docstring; ``docs/configuration.md`` and the README table are generated from them and a test
keeps them in agreement.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def parse_model_map(text: str) -> dict[str, str | None]:
    """``"co2=1.0.0, penguins"`` -> ``{"co2": "1.0.0", "penguins": None}`` (None = newest)."""
    out: dict[str, str | None] = {}
    for part in text.split(","):
        item = part.strip()
        if not item:
            continue
        name, _, version = item.partition("=")
        out[name.strip()] = version.strip() or None
    return out


class Settings(BaseSettings):
    """tabserve's configuration. Environment variables are ``TABSERVE_<FIELD>`` (case-insensitive)."""

    model_config = SettingsConfigDict(
        env_prefix="TABSERVE_", extra="ignore", frozen=True, use_attribute_docstrings=True
    )

    models_dir: Path = Path("models")
    """Folder holding ``<name>/<version>/`` model artifacts."""
    models: str = ""
    """Which models to load: ``co2,penguins`` or ``co2=1.0.0,penguins``. Empty = every model, newest version."""
    fallbacks: str = ""
    """Fallback version per model, served (degraded) if the configured one fails to load: ``co2=0.9.0``."""
    default_model: str = "co2"
    """The model behind ``POST /predict``."""
    host: str = "0.0.0.0"  # noqa: S104 - a container service listens on all interfaces
    """Interface to listen on."""
    port: int = Field(default=8080, validation_alias=AliasChoices("TABSERVE_PORT", "PORT"), ge=1, le=65535)
    """TCP port. ``PORT`` (set by Cloud Run) is honoured when ``TABSERVE_PORT`` is not set."""
    workers: int = Field(default=1, ge=1, le=64)
    """Worker processes."""
    data_dir: Path = Path("var")
    """Writable folder for the SQLite prediction log, its spill file and multiprocess metrics."""
    prediction_log: bool = True
    """Record every prediction in the prediction log."""
    log_queue_size: int = Field(default=5_000, ge=100)
    """Prediction-log rows held in memory for the writer (about 1 KB a row). When full, a request waits for
    the writer (at most 0.25 s) while the database is healthy; otherwise its rows go to the spill file."""
    log_journal: bool = True
    """Also append each queued prediction-log entry to a journal file next to the spill (page cache, no fsync):
    the rows a worker killed with SIGKILL had queued are replayed by the next worker in its slot."""
    store_url: SecretStr = SecretStr("")
    """Prediction log store: empty = SQLite under ``data_dir``; ``postgresql://...`` for several instances."""
    max_batch: int = Field(default=10_000, ge=1)
    """Most instances in one request (413 beyond)."""
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    """Largest request body in bytes (413 beyond, without reading it all)."""
    strict_fields: bool = True
    """Reject unknown fields with 422 (catches typos such as ``engine_sise``). False: ignore them with a warning."""
    log_format: Literal["json", "text"] = "json"
    """``json``: one Cloud Logging object per line; ``text``: human-readable."""
    log_level: str = "INFO"
    """Log level of the service's logger."""
    access_log: bool = True
    """One structured log line per request."""
    google_cloud_project: str = Field(
        default="", validation_alias=AliasChoices("TABSERVE_GOOGLE_CLOUD_PROJECT", "GOOGLE_CLOUD_PROJECT")
    )
    """Project id used to build ``logging.googleapis.com/trace`` (``GOOGLE_CLOUD_PROJECT`` is honoured)."""
    otlp_endpoint: str = Field(
        default="", validation_alias=AliasChoices("TABSERVE_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
    )
    """OTLP/HTTP endpoint for traces (``OTEL_EXPORTER_OTLP_ENDPOINT`` is honoured). Empty = tracing off."""
    max_in_flight: int = Field(default=64, ge=0)
    """Requests a worker has taken on and not answered (queued or running, counted from when their headers are
    parsed); beyond, 503 with Retry-After at once. 0 = unbounded."""
    max_queue_ms: float = Field(default=100.0, ge=0)
    """Longest a request may wait for its worker before it is refused with a fast 503 (load shedding). 0 = off.
    Under sustained overload a request also waits in its socket until the worker reads it, so an admitted
    request's end-to-end time can reach about twice this value."""
    shed_at_parse: bool = True
    """Decide admission when a request's headers are parsed, before it becomes a task, so a refusal costs a
    parse and one write. False: decided in the app only (uvicorn's plain httptools protocol)."""
    release_startup_memory: bool = True
    """Once ready, return the heap start-up freed (``malloc_trim``) and drop the resident pages of read-only library
    mappings nothing modified (they come back from the page cache when touched): about 25 MB less per worker.
    False: only the heap trim."""
    malloc_mmap_threshold_kb: int = Field(default=128, ge=0, le=32_768)
    """C allocations of at least this many KiB get their own mapping, returned to the system when freed (glibc
    ``M_MMAP_THRESHOLD``, set by ``tabserve serve`` before the models load; fixing it stops glibc raising it after
    large frees, which let batch requests grow a worker's heap by 15-35 MB). 0: glibc's own, moving threshold."""
    rate_limit: float = Field(default=0.0, ge=0.0)
    """Requests per second per authenticated API key (its name), else per client address; 429 beyond. 0 = off."""
    rate_limit_burst: int = Field(default=20, ge=1)
    """Burst size of the rate limit's token bucket."""
    admin_token: SecretStr = SecretStr("")
    """Admin credential (``Authorization: Bearer`` or ``X-API-Key``) for ``POST /admin/reload`` and the drift and
    coverage views: a hash from ``tabserve hash-key`` (or, outside production mode, the token itself). Empty and no
    admin-scoped API key = reload disabled (404), drift and coverage open."""
    api_keys: SecretStr = SecretStr("")
    """API keys as salted hashes, comma-separated ``name:scope+scope:sha256.salt.digest`` entries printed by
    ``tabserve hash-key``; scopes ``predict`` (predict, feedback, infer) and ``admin``. Never logged."""
    require_api_key: bool = False
    """Predict, feedback and infer need a key with the ``predict`` scope (401/403). False: anonymous calls pass,
    a presented key must still be valid."""
    production: bool = False
    """Production mode: refuse to start while the admin routes are open (no admin credential) or the admin token
    is in plain text."""
    shutdown_grace_s: float = Field(default=10.0, gt=0)
    """Seconds SIGTERM allows to finish in-flight requests and flush the prediction log."""
    drift_window: int = Field(default=1000, ge=10)
    """Recent instances per model compared with the training reference for drift."""
    coverage_window: int = Field(default=2000, ge=10)
    """Coverage monitoring: the newest answers with feedback counted per model, version, level and input pattern."""
    coverage_max_age_s: float = Field(default=604_800.0, gt=0)
    """Coverage monitoring: only feedback received within this many seconds counts (default 7 days)."""
    coverage_max_rows: int = Field(default=50_000, ge=100)
    """Coverage monitoring: most answers with feedback read per model and refresh (newest first; about 5 µs of a
    worker thread's CPU each, ~0.27 s for 50,000 on SQLite)."""
    coverage_refresh_s: float = Field(default=15.0, ge=0)
    """Coverage monitoring: how long a computed coverage report (and its gauges) is reused before the prediction
    log is read again; also how often adaptive levels pick up other workers' feedback."""
    coverage_tolerance: float = Field(default=0.03, gt=0, lt=0.5)
    """Coverage band: a cell alerts when its whole Wilson interval (z = 2.576) is outside level ± this."""
    coverage_min_samples: int = Field(default=200, ge=1)
    """Coverage band: fewer samples in a cell than this never alert (status ``too_few``)."""
    coverage_adaptive: bool = False
    """Adaptive conformal inference: serve each model version, level and pattern at an effective level moved by
    observed misses (``docs/coverage.md``). The answer keeps the requested level and adds ``effective_level``."""
    coverage_adaptive_gamma: float = Field(default=0.005, gt=0, lt=1)
    """Adaptive conformal inference step: the effective miscoverage moves by gamma x (alpha - miss) per feedback."""
    retention_days: float = Field(default=90.0, gt=0)
    """``tabserve prune`` deletes prediction log rows older than this."""
    prometheus_multiproc_dir: Path | None = Field(
        default=None, validation_alias=AliasChoices("TABSERVE_PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROC_DIR")
    )
    """Shared folder for multi-worker metrics; ``tabserve serve --workers N`` sets it (under ``data_dir``)."""
    warmup: bool = True
    """Warm every model with its example request before reporting ready."""

    @field_validator("default_model")
    @classmethod
    def _name(cls, value: str) -> str:
        return value.strip()

    def model_versions(self) -> dict[str, str | None]:
        return parse_model_map(self.models)

    def fallback_versions(self) -> dict[str, str]:
        return {k: v for k, v in parse_model_map(self.fallbacks).items() if v}


def settings_table() -> str:
    """The Markdown table of every setting (README and docs/configuration.md embed it; a test compares)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, info in Settings.model_fields.items():
        default = info.default
        if isinstance(default, SecretStr):
            default = default.get_secret_value()
        shown = "(empty)" if default in ("", None) else f"`{default}`"
        text = " ".join((info.description or "").split()).replace("``", "`").replace("|", "\\|")  # one line a row
        rows.append(f"| `TABSERVE_{name.upper()}` | {shown} | {text} |")
    return "\n".join(rows)
