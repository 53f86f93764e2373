"""Model metadata documents for ``GET /models...``: schema with units, categories, ranges, example, metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tabserve.manifest import CategoryInput, ClassificationOutput, Manifest, NumericInput
from tabserve.registry import ModelState

if TYPE_CHECKING:
    from tabserve.api.context import AppContext


def input_schema(manifest: Manifest) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for spec in manifest.inputs:
        item: dict[str, Any] = {
            "name": spec.name,
            "type": spec.type,
            "required": spec.required,
            "description": spec.description,
        }
        if isinstance(spec, NumericInput):
            item.update(
                unit=spec.unit,
                units=spec.units,
                integer=spec.integer,
                plausible_range=spec.plausible.model_dump(),
                training_range={"min": spec.training.min, "max": spec.training.max},
            )
        elif isinstance(spec, CategoryInput):
            item.update(categories=spec.categories, aliases=spec.aliases, unknown="served as 'unknown' with a warning")
        out.append(item)
    return out


def output_schema(manifest: Manifest) -> dict[str, Any]:
    output = manifest.output
    if isinstance(output, ClassificationOutput):
        return {"task": "classification", "name": output.name, "classes": output.classes}
    floor = {} if output.floor is None else {"floor": output.floor}
    return {"task": "regression", "name": output.name, "unit": output.unit, **floor}


def version_document(manifest: Manifest, *, serving: bool) -> dict[str, Any]:
    conformal = manifest.conformal
    return {
        "name": manifest.name,
        "version": manifest.version,
        "serving": serving,
        "created": manifest.created,
        "description": manifest.description,
        "inputs": input_schema(manifest),
        "output": output_schema(manifest),
        "confidence": {
            "method": f"split conformal ({conformal.score})",
            "levels": conformal.levels,
            "default_level": 0.9 if 0.9 in conformal.levels else conformal.levels[0],
            "patterns": conformal.pattern_names,
            "pattern_inputs": conformal.pattern_inputs,
        },
        "example_request": manifest.example_request,
        "metrics": manifest.metrics,
        "training_data": [d.model_dump() for d in manifest.training_data],
        "files": manifest.files,
    }


def model_summary(ctx: AppContext, name: str, state: ModelState) -> dict[str, Any]:
    from tabserve.artifacts import list_versions

    return {
        "name": name,
        "status": state.status,
        "version": state.version,
        "versions": list_versions(ctx.settings.models_dir, name),
        "predict": f"/models/{name}/predict",
    }
