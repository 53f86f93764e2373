"""The ``tabserve`` command: serve | train | verify | predict | export | drift | prune.

Heavy imports happen inside each sub-command, so ``tabserve verify`` and ``tabserve serve`` never load
the training stack.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from tabserve.config import Settings
from tabserve.errors import TabserveError

TRAINERS = {"co2": "tabserve.training.co2", "penguins": "tabserve.training.penguins"}
DEFAULT_MODELS = Path("models")


def _cmd_train(args: argparse.Namespace) -> int:
    from tabserve.training.options import TrainOptions

    module = importlib.import_module(TRAINERS[args.model])
    options = TrainOptions(
        data_dir=Path(args.data) if args.data else None,
        out_root=Path(args.out),
        version=args.version,
        seed=args.seed,
        extra=Path(args.extra) if args.extra else None,
        plots=not args.no_plots,
    )
    path = module.train(options)
    print(f"wrote {path}")
    return 0


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
        },
    }


def _cmd_serve(args: argparse.Namespace) -> int:
    overrides = {"TABSERVE_HOST": args.host, "TABSERVE_PORT": args.port, "TABSERVE_WORKERS": args.workers}
    for key, value in overrides.items():
        if value is not None:
            os.environ[key] = str(value)
    settings = Settings()
    problem = _preflight(settings)
    if problem is not None:
        print(f"tabserve serve: {problem}", file=sys.stderr)
        return 1
    settings.data_dir.mkdir(parents=True, exist_ok=True)
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
        "http": "httptools",
        "lifespan": "on",
        "access_log": False,
        "server_header": False,
        "log_config": _uvicorn_log_config(settings),
        "timeout_graceful_shutdown": max(1, int(settings.shutdown_grace_s * 0.5)),
        "timeout_keep_alive": 30,
    }
    if settings.workers > 1:
        uvicorn.run("tabserve.api.app:create_app", factory=True, workers=settings.workers, **common)  # type: ignore[arg-type]
        return 0
    from tabserve.api.app import create_app

    uvicorn.run(create_app(Settings()), **common)  # type: ignore[arg-type]
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


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from tabserve.artifacts import model_dir, verify_model_dir

    module = importlib.import_module(TRAINERS[args.model])
    verified = verify_model_dir(model_dir(Path(args.models), args.model, args.version))
    report = module.evaluate(verified, Path(args.data) if args.data else None)
    print(json.dumps(report, indent=2))
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
    train.add_argument("model", choices=sorted(TRAINERS))
    train.add_argument("--data", help="folder with the training CSVs (co2)")
    train.add_argument("--out", default=str(DEFAULT_MODELS), help="models root (default: models)")
    train.add_argument("--version", default="1.0.0")
    train.add_argument("--seed", type=int, default=20261126)
    train.add_argument("--extra", help="exported prediction log with feedback to add to training")
    train.add_argument("--no-plots", action="store_true", help="skip the model card's PNG plots")
    train.set_defaults(func=_cmd_train)

    evaluate = sub.add_parser("evaluate", help="re-score a committed model version on the data and print metrics")
    evaluate.add_argument("model", choices=sorted(TRAINERS))
    evaluate.add_argument("--data", help="folder with the training CSVs (co2)")
    evaluate.add_argument("--models", default=str(DEFAULT_MODELS), help="models root (default: models)")
    evaluate.add_argument("--version", help="default: newest")
    evaluate.set_defaults(func=_cmd_evaluate)

    verify = sub.add_parser("verify", help="check every file's sha256 and the manifest schema")
    verify.add_argument("path", nargs="?", default=str(DEFAULT_MODELS), help="a model version folder or a root")
    verify.set_defaults(func=_cmd_verify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except TabserveError as exc:
        print(f"tabserve {args.command}: {exc.detail}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    raise SystemExit(main())
