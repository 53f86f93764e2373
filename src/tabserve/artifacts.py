"""Model folders on disk: find versions, verify every file's sha256, read the manifest. No pickle.

A model version lives in ``<root>/<name>/<version>/`` with ``manifest.json``, ``model.onnx``,
``MODEL_CARD.md`` and the card's plots. ``verify_model_dir`` must pass before any runtime reads a byte
of the ONNX file; ``write_manifest`` is how training seals a folder.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from tabserve.errors import IntegrityError, ManifestError, ModelNotFoundError
from tabserve.manifest import MANIFEST_FILE, Manifest

_CHUNK = 1 << 20
_VERSION_PART = re.compile(r"(\d+)|(\D+)")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def version_sort_key(version: str) -> tuple[tuple[int, str], ...]:
    """Natural order: ``1.10.0`` after ``1.9.0``; numbers compare as numbers."""
    return tuple((int(num), "") if num else (-1, text) for num, text in _VERSION_PART.findall(version))


def read_manifest(model_dir: Path) -> Manifest:
    path = model_dir / MANIFEST_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise IntegrityError(
            f"{path}: missing (expected a manifest)", path=str(path), expected=None, actual=None
        ) from exc
    try:
        return Manifest.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(root)"
        raise ManifestError(f"{path}: invalid manifest at {where}: {first['msg']}") from exc


@dataclass(frozen=True, slots=True)
class VerifiedModel:
    """A model folder whose manifest parsed and whose every listed file matched its sha256."""

    path: Path
    manifest: Manifest

    @property
    def onnx_path(self) -> Path:
        return self.path / self.manifest.onnx.file

    def onnx_bytes(self) -> bytes:
        """The graph's bytes, checked again against the manifest's sha256 as they are read: the session is built
        from these bytes, never by reopening the path, so a file changed after verification is not loaded."""
        data = self.onnx_path.read_bytes()
        expected = self.manifest.files[self.manifest.onnx.file]
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise IntegrityError(
                f"{self.onnx_path}: sha256 mismatch (expected {expected}, actual {actual})",
                path=str(self.onnx_path),
                expected=expected,
                actual=actual,
            )
        return data


PICKLE_SUFFIXES = frozenset({".pkl", ".pickle", ".joblib", ".dill", ".sav", ".pt", ".pth"})
"""Files that are (or may hold) pickles: a model folder holding one is refused before anything is read."""
PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
VERSION_RE = re.compile(r"^[0-9]+(\.[0-9]+)*([a-z0-9.+-]*)$")
"""A model name / version as the manifest allows them: anything else (``..``, ``%2e%2e``, ``/etc``) is no model."""


def refuse_pickles(model_dir: Path) -> None:
    """ManifestError if any file of the folder is a pickle (by suffix, or by the pickle protocol's first bytes):
    tabserve never unpickles at serve time; ``tabserve build --trust-pickle`` converts one, in a child process."""
    for path in sorted(model_dir.rglob("*")):
        if not path.is_file():
            continue
        with path.open("rb") as handle:
            head = handle.read(2)
        if path.suffix.lower() in PICKLE_SUFFIXES or head in PICKLE_MAGIC:
            raise ManifestError(f"{path}: a pickle file in a model folder is refused (never loaded at serve time)")


def verify_model_dir(model_dir: Path) -> VerifiedModel:
    """Check the folder holds no pickle, the manifest's schema and every file's sha256. Raises IntegrityError /
    ManifestError."""
    refuse_pickles(model_dir)
    manifest = read_manifest(model_dir)
    if model_dir.name != manifest.version:
        raise ManifestError(
            f"{model_dir / MANIFEST_FILE}: version {manifest.version!r} does not match folder {model_dir.name!r}"
        )
    for name, expected in sorted(manifest.files.items()):
        path = model_dir / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ManifestError(f"{model_dir / MANIFEST_FILE}: file entry {name!r} leaves the folder")
        if not path.is_file():
            raise IntegrityError(
                f"{path}: missing (expected sha256 {expected})", path=str(path), expected=expected, actual=None
            )
        actual = sha256_file(path)
        if actual != expected:
            raise IntegrityError(
                f"{path}: sha256 mismatch (expected {expected}, actual {actual})",
                path=str(path),
                expected=expected,
                actual=actual,
            )
    return VerifiedModel(path=model_dir, manifest=manifest)


def list_versions(root: Path, name: str) -> list[str]:
    """Versions of one model under ``root``, oldest first (folders holding a manifest)."""
    model_root = root / name
    if not model_root.is_dir():
        return []
    versions = [p.name for p in model_root.iterdir() if p.is_dir() and (p / MANIFEST_FILE).exists()]
    return sorted(versions, key=version_sort_key)


def list_models(root: Path) -> list[str]:
    """Model names under ``root``: folders with at least one version."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and list_versions(root, p.name))


def model_dir(root: Path, name: str, version: str | None = None) -> Path:
    """The folder of ``name`` at ``version`` (newest when None). Raises ModelNotFoundError."""
    if not NAME_RE.match(name) or (version is not None and not VERSION_RE.match(version)):
        raise ModelNotFoundError(f"no model {name!r} version {version!r}")  # never a path outside ``root``
    versions = list_versions(root, name)
    if not versions:
        raise ModelNotFoundError(f"no model {name!r} under {root}")
    chosen = version or versions[-1]
    if chosen not in versions:
        raise ModelNotFoundError(f"model {name!r} has no version {chosen!r} (has {', '.join(versions)})")
    return root / name / chosen


def write_manifest(model_dir: Path, manifest_data: dict[str, object]) -> Manifest:
    """Seal a folder: hash every file beside the manifest, validate, write ``manifest.json``."""
    files = {p.name: sha256_file(p) for p in sorted(model_dir.iterdir()) if p.is_file() and p.name != MANIFEST_FILE}
    manifest = Manifest.model_validate({**manifest_data, "files": files})
    text = json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=False, ensure_ascii=False)
    (model_dir / MANIFEST_FILE).write_text(text + "\n", encoding="utf-8")
    return manifest
