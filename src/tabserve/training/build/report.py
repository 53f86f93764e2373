"""What ``tabserve build`` prints when it is done: the version, its test metrics and a ready curl command."""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from tabserve.training.build.command import BuildResult, run_build


def _metric_line(result: BuildResult) -> str:
    tests = result.metrics["test"]
    full = next(iter(tests.values()))
    if "accuracy" in full:
        text = f"accuracy {full['accuracy']:.3f}, log loss {full['log_loss']:.3f}, ECE {full['ece']:.3f}"
        cover = full["set_coverage"]
    else:
        text = f"MAE {full['mae']:.4g}, RMSE {full['rmse']:.4g}, R² {full['r2']:.3f}"
        cover = full["coverage"]
    shown = ", ".join(f"{level}: {value:.3f}" for level, value in cover.items())
    return f"test ({full['name']}, {full['rows']} rows): {text}; coverage {shown}"


def curl_command(name: str, example: dict[str, object], port: int) -> str:
    body = json.dumps(example, ensure_ascii=False)
    url = f"http://127.0.0.1:{port}/models/{name}/predict"
    return f"curl -s -X POST {url} -H 'Content-Type: application/json' -d {shlex.quote(body)}"


def print_report(args: argparse.Namespace) -> int:
    result = run_build(args, sys.stderr)
    print(f"built {args.name} {result.version} in {result.seconds:.1f} s: {result.path}")
    print(_metric_line(result))
    print("serve it (a running server serving every model on disk picks it up on POST /admin/reload or SIGHUP):")
    print(f"  TABSERVE_MODELS_DIR={shlex.quote(str(args.models_dir))} tabserve serve --port {args.port}")
    print(curl_command(args.name, result.example, args.port))
    return 0
