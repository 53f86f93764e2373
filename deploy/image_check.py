"""Build-time check of the serving image (run by the Dockerfile, never shipped in it).

Imports every tabserve module except the optional extras' packages (training, the build included, needs
pandas/scikit-learn, score needs pyarrow; the serving image carries none of them), then loads every bundled model
version exactly as the server does (``load_serving_model``: verify, open the ONNX session, validate and run the
manifest's example request).
A venv trim that removed something serving needs fails the build here.
"""

# ruff: noqa: T201 - a command-line tool: it reports on stdout/stderr

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
from pathlib import Path

import tabserve
from tabserve.artifacts import list_models, list_versions
from tabserve.registry import load_serving_model


#: packages of optional extras (``train``, ``score``/``spark``): not installed in the serving image
OPTIONAL_PACKAGES = ("tabserve.training", "tabserve.score")


def main(root: Path) -> int:
    modules = [
        info.name
        for info in pkgutil.walk_packages(tabserve.__path__, "tabserve.")
        if not info.name.startswith(OPTIONAL_PACKAGES)
    ]
    for name in modules:
        importlib.import_module(name)
    if importlib.util.find_spec("sklearn") is not None or importlib.util.find_spec("pandas") is not None:
        print("image-check: training libraries found in the serving image", file=sys.stderr)
        return 1
    checked = 0
    for name in list_models(root):
        for version in list_versions(root, name):
            model = load_serving_model(root / name / version, strict_fields=True, warmup=True)
            print(f"image-check: {name} {version} serves its example request ({model.onnx_sha256[:12]})")
            checked += 1
    if checked == 0:
        print(f"image-check: no model under {root}", file=sys.stderr)
        return 1
    print(f"image-check: {len(modules)} modules imported, {checked} model versions ran")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "/app/models")))
