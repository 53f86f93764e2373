"""The registry serves a model folder added while serving — only when every model on disk is served, and only once
it verifies (a broken new folder never becomes a model that fails readiness)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import MODELS
from tabserve.errors import IntegrityError, ModelNotFoundError
from tabserve.registry import ModelRegistry


def copy_model(root: Path, name: str) -> Path:
    target = root / name
    shutil.copytree(MODELS / name, target)
    return target


def test_a_folder_added_later_is_served_on_reload(tmp_path: Path) -> None:
    copy_model(tmp_path, "penguins")
    registry = ModelRegistry(tmp_path, {}, {}, warmup=False)
    registry.load_all()
    assert registry.names() == ["penguins"] and registry.new_on_disk() == []
    copy_model(tmp_path, "co2")
    assert registry.new_on_disk() == ["co2"]
    model = registry.reload("co2")
    assert registry.get("co2") is model and model.version == "3.0.1"
    assert registry.names() == ["co2", "penguins"] and registry.ready and registry.new_on_disk() == []


def test_a_broken_new_folder_is_not_added(tmp_path: Path) -> None:
    copy_model(tmp_path, "penguins")
    registry = ModelRegistry(tmp_path, {}, {}, warmup=False)
    registry.load_all()
    broken = copy_model(tmp_path, "co2")
    onnx = next((broken / "3.0.1").glob("*.onnx"))
    onnx.write_bytes(onnx.read_bytes()[:-1] + b"\0")
    with pytest.raises(IntegrityError):
        registry.reload("co2")
    assert registry.names() == ["penguins"] and registry.ready


def test_an_explicit_model_list_is_not_extended(tmp_path: Path) -> None:
    copy_model(tmp_path, "penguins")
    registry = ModelRegistry(tmp_path, {"penguins": None}, {}, warmup=False)
    registry.load_all()
    copy_model(tmp_path, "co2")
    assert registry.new_on_disk() == []
    with pytest.raises(ModelNotFoundError):
        registry.reload("co2")
