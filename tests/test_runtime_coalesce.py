"""Single rows ready in the same event-loop turn share one ONNX call, and get exactly their own answers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from conftest import MODELS, varied_co2_instances
from tabserve.registry import ModelRegistry, load_serving_model
from tabserve.runtime import FloatMatrix, RowCoalescer
from tabserve.service import PredictionService


def test_rows_of_one_turn_run_as_one_matrix_with_their_own_outputs() -> None:
    model = load_serving_model(MODELS / "co2" / "1.0.0", strict_fields=True, warmup=False)
    rows = [
        model.runtime.encoder.encode_row(model.validator.one(r).values)
        for r in varied_co2_instances(model.manifest.example_request, 40)
    ]
    calls: list[int] = []

    def run(matrix: FloatMatrix) -> npt.NDArray[np.float32]:
        calls.append(len(matrix))
        return model.runtime.run(matrix)

    coalescer = RowCoalescer(run)

    async def main() -> list[tuple[npt.NDArray[np.float32], float]]:
        return await asyncio.gather(*(coalescer.submit(r) for r in rows))

    results = asyncio.run(main())
    assert calls == [40]
    for row, (output, seconds) in zip(rows, results, strict=True):
        np.testing.assert_array_equal(output, model.runtime.run(row))  # bitwise: rows are independent
        assert seconds > 0


def test_an_error_reaches_every_waiting_row_and_a_cancelled_row_is_skipped() -> None:
    def failing(matrix: FloatMatrix) -> npt.NDArray[np.float32]:
        raise RuntimeError("boom")

    async def main() -> None:
        coalescer = RowCoalescer(failing)
        first = coalescer.submit(np.zeros((1, 3), dtype=np.float32))
        second = coalescer.submit(np.zeros((1, 3), dtype=np.float32))
        second.cancel()
        with pytest.raises(RuntimeError, match="boom"):
            await first
        assert second.cancelled()
        ok = RowCoalescer(lambda m: m[:, 0])
        alone = await ok.submit(np.ones((1, 3), dtype=np.float32))
        np.testing.assert_array_equal(alone[0], [1.0])

    asyncio.run(main())


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("name", ["co2", "penguins"])
def test_concurrent_predictions_equal_one_at_a_time(name: str, share: bool, tmp_path: Path) -> None:
    registry = ModelRegistry(MODELS, {name: None}, {}, warmup=False)
    registry.load_all()
    service = PredictionService(registry, max_batch=100)
    example = registry.get(name).manifest.example_request
    bodies = varied_co2_instances(example, 30) if name == "co2" else [dict(example)] * 5
    expected = [service.predict(name, body, request_id=f"r{i}") for i, body in enumerate(bodies)]

    async def main() -> list[Any]:
        return await asyncio.gather(
            *(service.answer_async(name, body, request_id=f"r{i}", share=share) for i, body in enumerate(bodies))
        )

    assert asyncio.run(main()) == expected
