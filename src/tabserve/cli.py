"""The ``tabserve`` command: serve | train | build | verify | predict | score | export | drift | prune | hash-key.

Heavy imports happen inside each sub-command, so ``tabserve verify`` and ``tabserve serve`` never load
the training stack.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tabserve.config import Settings
from tabserve.errors import TabserveError
from tabserve.memory import fix_mmap_threshold

if TYPE_CHECKING:
    from tabserve.store.base import PredictionStore

DEFAULT_MODELS = Path("models")
SHEDDING_PROTOCOL = "tabserve.api.shedding:SheddingProtocol"
"""uvicorn's httptools protocol with admission decided at parse time (an import string: workers import it)."""


def _cmd_train(args: argparse.Namespace) -> int:
    """A shipped model rebuilt from its packaged spec and the generic build (``training/build/shipped.py``)."""
    from tabserve.training.build.report import print_report  # the train extra: imported only for this command
    from tabserve.training.build.shipped import build_arguments

    built = build_arguments(
        args.model,
        Path(args.data) if args.data else None,
        Path(args.extra) if args.extra else None,
        Path(args.out),
        args.version,
        args.seed,
    )
    try:
        return print_report(built)
    finally:
        if built.table_dir is not None:
            shutil.rmtree(built.table_dir, ignore_errors=True)


def _cmd_build(args: argparse.Namespace) -> int:
    """A table (and optionally a fitted model or an ONNX file) to a sealed, calibrated version
    (``tabserve.training.build``)."""
    from tabserve.training.build.report import print_report  # the train extra: imported only for this command

    return print_report(args)


def _preflight(settings: Settings) -> str | None:
    """Fail fast before any server starts: every configured model (or its fallback) must verify."""
    from tabserve.artifacts import list_models, model_dir, verify_model_dir

    wanted = settings.model_versions() or dict.fromkeys(list_models(settings.models_dir))
    if not wanted:
        return f"no models under {settings.models_dir}"
    fallbacks = settings.fallback_versions()
    for name, version in wanted.items():
        try:
            verify_model_dir(model_dir(settings.models_dir, name, version))
        except TabserveError as exc:
            fallback = fallbacks.get(name)
            if fallback is None:
                return exc.detail
            try:
                verify_model_dir(model_dir(settings.models_dir, name, fallback))
            except TabserveError as fallback_exc:
                return f"{exc.detail}; fallback {name} {fallback}: {fallback_exc.detail}"
    return None


def _uvicorn_log_config(settings: Settings) -> dict[str, object]:
    """uvicorn's loggers and tabserve's module loggers (``tabserve.store``: the prediction log's spill, replay
    and data-loss lines) on stdout in the service's format. Without the ``tabserve`` entry those lines reached
    only Python's last-resort handler: bare text on stderr, no severity, invisible to a JSON log pipeline. The
    apps' own loggers (``tabserve.app.<id>``) have their handler and do not propagate, so nothing is doubled."""
    formatter: dict[str, object] = (
        {"()": "tabserve.observability.logging.JsonFormatter", "project": settings.google_cloud_project or None}
        if settings.log_format == "json"
        else {"()": "tabserve.observability.logging.TextFormatter"}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"tabserve": formatter},
        "handlers": {
            "stdout": {"class": "logging.StreamHandler", "formatter": "tabserve", "stream": "ext://sys.stdout"}
        },
        "loggers": {
            "uvicorn": {"handlers": ["stdout"], "level": "WARNING", "propagate": False},
            "uvicorn.error": {"handlers": ["stdout"], "level": "INFO", "propagate": False},
            "tabserve": {"handlers": ["stdout"], "level": settings.log_level.upper(), "propagate": False},
        },
    }


def _cmd_serve(args: argparse.Namespace) -> int:
    overrides = {"TABSERVE_HOST": args.host, "TABSERVE_PORT": args.port, "TABSERVE_WORKERS": args.workers}
    for key, value in overrides.items():
        if value is not None:
            os.environ[key] = str(value)
    settings = Settings()
    from tabserve.api.auth import check_production

    check_production(settings)  # ConfigurationError: exit code 1, the reason on stderr
    problem = _preflight(settings)
    if problem is not None:
        print(f"tabserve serve: {problem}", file=sys.stderr)
        return 1
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.malloc_mmap_threshold_kb:
        # Before the models load (memory.py: fixed from the start, the heap stays compact): here, and through
        # glibc's own variables in spawned workers (which repeat it once ready, as an embedded app does).
        size = settings.malloc_mmap_threshold_kb * 1024
        fix_mmap_threshold(size)
        os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(size))
        os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", str(2 * size))
    if settings.workers > 1:
        # prometheus_client picks its multiprocess mode at import: set it up before anything imports it
        metrics_dir = (settings.data_dir / "prometheus").resolve()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    import uvicorn

    common: dict[str, object] = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        "http": SHEDDING_PROTOCOL if settings.shed_at_parse else "httptools",
        "lifespan": "on",
        "access_log": False,
        "server_header": False,
        "log_config": _uvicorn_log_config(settings),
        "timeout_graceful_shutdown": max(1, int(settings.shutdown_grace_s * 0.5)),
        "timeout_keep_alive": 30,
    }
    if settings.workers > 1:
        from tabserve.worker_reloads import WorkerReloads

        WorkerReloads.clear(settings.data_dir)  # reloads ordered by an earlier server's workers are not this one's
        signal.signal(signal.SIGTERM, lambda *_: None)
        uvicorn.run("tabserve.api.app:create_app", factory=True, workers=settings.workers, **common)  # type: ignore[arg-type]
        return 0
    from tabserve.api.app import create_app

    app = create_app(settings)
    registry = app.state.ctx.registry
    registry.load_all()  # verify, load and warm before binding the port: a bad model fails here, in one line
    if registry.failures():
        print(f"tabserve serve: {'; '.join(registry.failures().values())}", file=sys.stderr)
        return 1
    # uvicorn re-raises the SIGTERM it handled once it has shut down gracefully, which would turn a clean
    # drain into "killed by signal 15"; a no-op handler makes the process exit 0 as orchestrators expect.
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.run(app, **common)  # type: ignore[arg-type]
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    """Offline prediction through the same service path as the server (no HTTP)."""
    import json

    from tabserve.registry import ModelRegistry
    from tabserve.service import PredictionService

    text = sys.stdin.read() if args.input == "-" else Path(args.input).read_text(encoding="utf-8")
    registry = ModelRegistry(Path(args.models), {args.model: args.version}, {}, warmup=False)
    registry.load_all()
    failures = registry.failures()
    if failures:
        print(f"tabserve predict: {failures[args.model]}", file=sys.stderr)
        return 1
    service = PredictionService(registry, max_batch=1_000_000)
    result = service.predict(args.model, json.loads(text), request_id="cli", level=args.level)
    print(json.dumps(result, indent=2))
    return 0


def _open_store(args: argparse.Namespace) -> PredictionStore:
    from tabserve.store.base import open_store

    settings = Settings()
    url = args.store if args.store is not None else settings.store_url.get_secret_value()
    return open_store(url, settings.data_dir)


def _cmd_export(args: argparse.Namespace) -> int:
    from tabserve.store.export import export_log, parse_since

    store = _open_store(args)
    out = Path(args.out or f"{args.model}-export.{args.format}")
    count = export_log(store, args.model, parse_since(args.since), args.labelled_only, args.format, out)
    print(f"wrote {count} rows to {out}")
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    from tabserve.store.retention import prune

    days = args.days if args.days is not None else Settings().retention_days
    removed = prune(_open_store(args), days)
    print(f"pruned {removed} rows older than {days:g} days")
    return 0


def _cmd_drift(args: argparse.Namespace) -> int:
    import json

    from tabserve.artifacts import model_dir, verify_model_dir
    from tabserve.observability.drift import drift_from_inputs, write_drift_report
    from tabserve.store.export import parse_since

    store = _open_store(args)
    manifest = verify_model_dir(model_dir(Path(args.models), args.model, args.version)).manifest
    inputs = store.recent_inputs(args.model, parse_since(args.since), args.limit)
    report = drift_from_inputs(manifest, inputs, model=args.model, min_rows=args.min_rows)
    report["coverage"] = _coverage_report(store, args.model, manifest.conformal.pattern_names)
    json_path, html_path = write_drift_report(report, Path(args.out))
    flagged = [name for name, f in report["features"].items() if f["status"] == "drift"]
    print(json.dumps({"rows": len(inputs), "drift": flagged, "json": str(json_path), "html": str(html_path)}))
    return 0


def _coverage_report(store: PredictionStore, model: str, pattern_names: dict[str, str]) -> dict[str, object]:
    """The drift report's coverage section, with the service's window and band settings."""
    from tabserve.observability.coverage import CoverageMonitor, CoverageRule

    settings = Settings()
    rule = CoverageRule(tolerance=settings.coverage_tolerance, min_samples=settings.coverage_min_samples)
    monitor = CoverageMonitor(
        store.labelled_window,
        window=settings.coverage_window,
        max_age_s=settings.coverage_max_age_s,
        max_rows=settings.coverage_max_rows,
        rule=rule,
    )
    return monitor.compute(model, pattern_names)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    """A committed version re-scored on a labelled file through the serving path (``score/evaluate.py``)."""
    import json

    from tabserve.score.evaluate import evaluate_file

    report = evaluate_file(
        Path(args.models),
        args.model,
        args.version,
        Path(args.data),
        target=args.target,
        levels=args.level,
        every_pattern=args.every_pattern,
        batch_rows=args.batch_rows,
    )
    text = json.dumps(report, indent=2, ensure_ascii=False)
    if args.out:
        try:
            Path(args.out).write_text(text + "\n", encoding="utf-8")
        except OSError as exc:
            raise TabserveError(f"--out {args.out}: {exc.strerror or exc}") from exc
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        print(text)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from tabserve.artifacts import list_models, list_versions, verify_model_dir
    from tabserve.manifest import MANIFEST_FILE

    root = Path(args.path)
    if (root / MANIFEST_FILE).exists():
        dirs = [root]
    else:
        dirs = [root / name / v for name in list_models(root) for v in list_versions(root, name)]
        if not dirs:
            print(f"tabserve verify: no model folders under {root}", file=sys.stderr)
            return 2
    for model_dir in dirs:
        verified = verify_model_dir(model_dir)
        print(f"ok {verified.manifest.name} {verified.manifest.version} ({len(verified.manifest.files)} files)")
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    """Batch scoring of a file (``tabserve.score``): locally on every core, or as a Spark job."""
    from tabserve.score.command import run_command

    return run_command(args)


def _cmd_hash_key(args: argparse.Namespace) -> int:
    """Print a key's salted hash (for TABSERVE_ADMIN_TOKEN) and its TABSERVE_API_KEYS entry; a new key unless
    one is given on stdin. The key itself is printed only when generated here (it is stored nowhere)."""
    from tabserve.api.auth import hash_key, key_entry, new_key

    scopes = frozenset(s.strip() for s in args.scopes.split(",") if s.strip())
    key = sys.stdin.readline().strip() if args.stdin else new_key()
    entry = key_entry(args.name, scopes, key)
    if not args.stdin:
        print(f"key:   {key}")
    print(f"hash:  {hash_key(key)}")
    print(f"entry: {entry}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tabserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP service (settings: TABSERVE_* environment variables)")
    serve.add_argument("--host", help="interface (default 0.0.0.0, TABSERVE_HOST)")
    serve.add_argument("--port", type=int, help="port (default 8080, TABSERVE_PORT or PORT)")
    serve.add_argument("--workers", type=int, help="worker processes (default 1, TABSERVE_WORKERS)")
    serve.set_defaults(func=_cmd_serve)

    predict = sub.add_parser("predict", help="predict offline from a JSON file (one instance or {instances})")
    predict.add_argument("model")
    predict.add_argument("--input", default="-", help="JSON file, or - for standard input")
    predict.add_argument("--level", type=float, help="confidence level (default 0.9)")
    predict.add_argument("--models", default=str(DEFAULT_MODELS), help="models root (default: models)")
    predict.add_argument("--version", help="default: newest")
    predict.set_defaults(func=_cmd_predict)

    train = sub.add_parser("train", help="train, calibrate, evaluate and export a model version")
    from tabserve.training.build.shipped import spec_models  # standard library only: nothing of the build

    train.add_argument("model", choices=sorted(spec_models()))
    train.add_argument(
        "--data", help="folder with the training CSVs (co2; penguins: a CSV or its folder, default the bundled one)"
    )
    train.add_argument("--out", default=str(DEFAULT_MODELS), help="models root (default: models)")
    train.add_argument("--version", help="default: the next minor, never overwritten")
    train.add_argument("--seed", type=int, help="random seed (default: the one the bundled models used)")
    train.add_argument("--extra", help="exported prediction log with feedback to add to training")
    train.set_defaults(func=_cmd_train)

    from tabserve.training.build.arguments import add_build_parser  # argparse only: nothing of the build is imported

    add_build_parser(sub, _cmd_build, str(DEFAULT_MODELS))

    evaluate = sub.add_parser(
        "evaluate", help="re-score a model version on a labelled CSV/Parquet file: metrics and coverage per pattern"
    )
    evaluate.add_argument("model", help="model name (a folder under --models)")
    evaluate.add_argument("--data", required=True, help="CSV or Parquet file with the inputs and the true value")
    evaluate.add_argument("--target", help="the column with the true value (default: the model's output name)")
    evaluate.add_argument("--version", help="default: newest")
    evaluate.add_argument("--models", default=str(DEFAULT_MODELS), help="models root (default: models)")
    evaluate.add_argument(
        "--level", type=float, action="append", help="confidence level, repeatable (default: the manifest's levels)"
    )
    evaluate.add_argument(
        "--every-pattern",
        action="store_true",
        help="score every row once per missing-input pattern, its absent inputs blanked (default: rows as given)",
    )
    evaluate.add_argument("--batch-rows", type=int, default=65_536, help="rows per batch (default 65536)")
    evaluate.add_argument("--out", help="write the JSON report here (default: standard output)")
    evaluate.set_defaults(func=_cmd_evaluate)

    export = sub.add_parser("export", help="the prediction log joined with feedback, in the training layout")
    export.add_argument("--model", default="co2")
    export.add_argument("--store", help="store URL (default: TABSERVE_STORE_URL, else SQLite under the data dir)")
    export.add_argument("--since", help="ISO 8601 time, unix seconds, or an age such as 7d")
    export.add_argument("--labelled-only", action="store_true", help="only rows with feedback")
    export.add_argument("--format", choices=["csv", "parquet"], default="csv")
    export.add_argument("--out", help="output file (default: <model>-export.<format>)")
    export.set_defaults(func=_cmd_export)

    prune = sub.add_parser("prune", help="delete prediction log rows older than the retention period")
    prune.add_argument("--store", help="store URL (default: TABSERVE_STORE_URL, else SQLite under the data dir)")
    prune.add_argument("--days", type=float, help="default: TABSERVE_RETENTION_DAYS")
    prune.set_defaults(func=_cmd_prune)

    drift = sub.add_parser("drift", help="drift report (JSON + HTML) of logged inputs vs the training reference")
    drift.add_argument("--model", default="co2")
    drift.add_argument("--store", help="store URL (default: TABSERVE_STORE_URL, else SQLite under the data dir)")
    drift.add_argument("--since", help="ISO 8601 time, unix seconds, or an age such as 7d")
    drift.add_argument("--limit", type=int, default=100_000, help="most recent rows to compare")
    drift.add_argument("--min-rows", type=int, default=500, help="below this the status is insufficient_data")
    drift.add_argument("--models", default=str(DEFAULT_MODELS))
    drift.add_argument("--version", help="reference model version (default: newest)")
    drift.add_argument("--out", default="drift-report", help="output folder")
    drift.set_defaults(func=_cmd_drift)

    from tabserve.score.arguments import add_score_parser  # argparse only: nothing of the scorer is imported

    add_score_parser(sub, _cmd_score, str(DEFAULT_MODELS))

    hash_key = sub.add_parser("hash-key", help="new API key and its salted hash (TABSERVE_API_KEYS, _ADMIN_TOKEN)")
    hash_key.add_argument("--name", default="client", help="the key's name (logs and rate limit know it by this)")
    hash_key.add_argument("--scopes", default="predict", help="comma-separated: predict, admin (default predict)")
    hash_key.add_argument("--stdin", action="store_true", help="hash the key read from stdin instead of a new one")
    hash_key.set_defaults(func=_cmd_hash_key)

    verify = sub.add_parser("verify", help="check every file's sha256 and the manifest schema")
    verify.add_argument("path", nargs="?", default=str(DEFAULT_MODELS), help="a model version folder or a root")
    verify.set_defaults(func=_cmd_verify)
    return parser


#: commands that need an optional extra (``pyproject.toml``): a missing module is named with the install line
_EXTRA_OF_COMMAND = {"train": "train", "build": "train", "evaluate": "score", "score": "score"}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except TabserveError as exc:
        print(f"tabserve {args.command}: {exc.detail}", file=sys.stderr)
        return 1
    except ValueError as exc:  # bad arguments found after parsing (e.g. --since)
        print(f"tabserve {args.command}: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # an optional extra missing (the serving image carries none of them)
        extra = _EXTRA_OF_COMMAND.get(args.command)
        if extra is None:
            raise
        print(
            f"tabserve {args.command}: needs the '{extra}' extra (module {exc.name!r} is not installed): "
            f"pip install 'tabserve[{extra}]'",
            file=sys.stderr,
        )
        return 2
    return code


if __name__ == "__main__":
    raise SystemExit(main())
