"""Loaded models by name and version: verify → load → warm before serving; fallback versions; hot reload.

A model that cannot serve answers 503 for that model only; the others keep serving. A reload builds the new
version completely (sha256 verified, ONNX session created, warmed with a real prediction) before it swaps in
atomically; if anything fails the old version keeps serving and the error is reported.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tabserve.artifacts import list_models, model_dir, verify_model_dir
from tabserve.confidence import Confidence
from tabserve.errors import ModelNotFoundError, ModelUnavailableError, TabserveError
from tabserve.features.validation import InstanceValidator
from tabserve.manifest import Manifest
from tabserve.runtime import OnnxModel


@dataclass(frozen=True, slots=True)
class ServingModel:
    """Everything needed to answer for one model version; immutable, swapped whole on reload."""

    manifest: Manifest
    path: Path
    runtime: OnnxModel
    validator: InstanceValidator
    confidence: Confidence
    onnx_sha256: str
    degraded: bool = False

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version


def load_serving_model(path: Path, *, strict_fields: bool, warmup: bool, degraded: bool = False) -> ServingModel:
    """Verify every file, open the ONNX session and (optionally) warm it with the manifest's example."""
    verified = verify_model_dir(path)
    runtime = OnnxModel(verified)
    model = ServingModel(
        manifest=verified.manifest,
        path=path,
        runtime=runtime,
        validator=InstanceValidator(verified.manifest, strict_fields=strict_fields),
        confidence=Confidence.from_manifest(verified.manifest),
        onnx_sha256=verified.manifest.files[verified.manifest.onnx.file],
        degraded=degraded,
    )
    if warmup:
        instance = model.validator.one(verified.manifest.example_request)
        runtime.run(runtime.encoder.encode_row(instance.values))
    return model


@dataclass(slots=True)
class ModelState:
    """What ``/ready`` reports for one configured model."""

    name: str
    status: str = "loading"  # loading | ready | degraded | failed
    version: str | None = None
    requested_version: str | None = None
    error: str | None = None
    loaded_at: float | None = None
    serving: ServingModel | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, object]:
        return {
            "status": self.status,
            "version": self.version,
            "requested_version": self.requested_version,
            "error": self.error,
        }


Listener = Callable[[ModelState], None]


class ModelRegistry:
    def __init__(
        self,
        root: Path,
        wanted: dict[str, str | None],
        fallbacks: dict[str, str],
        *,
        strict_fields: bool = True,
        warmup: bool = True,
        listener: Listener | None = None,
    ) -> None:
        self.root = root
        self.discover = not wanted  # serving every model on disk: a model folder added later is served on reload
        self.wanted = dict(wanted) or dict.fromkeys(list_models(root))
        self.fallbacks = fallbacks
        self.strict_fields = strict_fields
        self.warmup = warmup
        self._listener = listener
        self._states = {name: ModelState(name, requested_version=v) for name, v in self.wanted.items()}
        self._reload_lock = threading.Lock()

    def _notify(self, state: ModelState) -> None:
        if self._listener is not None:
            self._listener(state)

    def _load(self, name: str, version: str | None, *, degraded: bool = False) -> ServingModel:
        path = model_dir(self.root, name, version)
        return load_serving_model(path, strict_fields=self.strict_fields, warmup=self.warmup, degraded=degraded)

    def load_all(self) -> None:
        """Load every configured model; a failing one falls back, or is marked failed (503 for it alone)."""
        for name, version in self.wanted.items():
            state = self._states[name]
            try:
                self._install(state, self._load(name, version))
            except TabserveError as exc:
                state.error = exc.detail
                fallback = self.fallbacks.get(name)
                if fallback is None or fallback == version:
                    state.status = "failed"
                    self._notify(state)
                    continue
                try:
                    self._install(state, self._load(name, fallback, degraded=True), keep_error=True)
                except TabserveError as fallback_exc:
                    state.status = "failed"
                    state.error = f"{exc.detail}; fallback {fallback}: {fallback_exc.detail}"
                    self._notify(state)

    def _install(self, state: ModelState, model: ServingModel, *, keep_error: bool = False) -> None:
        state.serving = model
        state.version = model.version
        state.status = "degraded" if model.degraded else "ready"
        state.loaded_at = time.time()
        if not keep_error:
            state.error = None
        self._notify(state)

    def failures(self) -> dict[str, str]:
        """Models with no usable version at all, with their error (``tabserve serve`` exits on these)."""
        return {s.name: s.error or "not loaded" for s in self._states.values() if s.serving is None}

    def reload(self, name: str, version: str | None = None) -> ServingModel:
        """Verify, load and warm ``version`` (newest when None); swap it in; on failure keep the old one."""
        state = self._states.get(name)
        if state is None and not (self.discover and name in list_models(self.root)):
            raise ModelNotFoundError(f"model {name!r} is not configured (configured: {', '.join(self._states)})")
        with self._reload_lock:
            try:
                model = self._load(name, version)
            except TabserveError as exc:
                if state is None:  # a new folder that does not verify: never served, readiness unchanged
                    raise
                state.error = f"reload to {version or 'newest'} failed, still serving {state.version}: {exc.detail}"
                self._notify(state)
                raise
            if state is None:  # a model folder added while serving (``tabserve build``): served from now on
                state = self._states.setdefault(name, ModelState(name, requested_version=version))
            state.requested_version = version
            self._install(state, model)
            return model

    def get(self, name: str, version: str | None = None) -> ServingModel:
        state = self._states.get(name)
        if state is None:
            raise ModelNotFoundError(f"no model {name!r} (available: {', '.join(sorted(self._states))})")
        model = state.serving
        if model is None:
            raise ModelUnavailableError(f"model {name!r} cannot serve: {state.error or state.status}")
        if version is not None and version != model.version:
            raise ModelNotFoundError(f"model {name!r} version {version!r} is not loaded (serving {model.version})")
        return model

    def states(self) -> dict[str, ModelState]:
        return dict(self._states)

    @property
    def ready(self) -> bool:
        return bool(self._states) and all(s.serving is not None for s in self._states.values())

    @property
    def degraded(self) -> bool:
        return any(s.status == "degraded" for s in self._states.values())

    def names(self) -> list[str]:
        return sorted(self._states)

    def new_on_disk(self) -> list[str]:
        """Model folders added under the root since start-up (only when every model on disk is served)."""
        return [n for n in list_models(self.root) if n not in self._states] if self.discover else []
