"""The ``tabserve`` command: serve | train | verify | predict | export | drift | prune.

Heavy imports happen inside each sub-command, so ``tabserve verify`` and ``tabserve serve`` never load
the training stack.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

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
