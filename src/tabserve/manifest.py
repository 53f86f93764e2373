"""The manifest.json schema of a model version: inputs, outputs, encoding, conformal tables, metrics.

A manifest is the whole contract between training and serving. Training writes it (``training/``),
serving reads it (``artifacts.py`` verifies the files it lists, ``runtime.py`` applies its encoding,
``features/`` validates requests against its input schema). No code is ever loaded from a model folder.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Range(_Strict):
    """A closed interval in the input's canonical unit."""

    min: float
    max: float

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.min > self.max:
            raise ValueError(f"range min {self.min} is above max {self.max}")
        return self


class TrainingRange(_Strict):
    """What training saw: extremes and quantiles, in the canonical unit."""

    min: float
    max: float
    q01: float
    q99: float
    mean: float
    std: float


class NumericInput(_Strict):
    name: str
    type: Literal["number"] = "number"
    description: str
    required: bool
    unit: str = Field(description="canonical unit; the value the model sees is in this unit")
    units: list[str] = Field(description="every unit a request may use for this input")
    integer: bool = False
    plausible: Range = Field(description="physically possible values; outside is rejected (422)")
    training: TrainingRange = Field(
        description="outside [min, max] is flagged out_of_distribution, unless in_distribution is given"
    )
    in_distribution: Range | None = Field(
        default=None,
        description="optional: outside [min, max] is flagged out_of_distribution (e.g. training quantiles, or "
        "model years up to two past the newest trained on); absent: the training min/max",
    )


class CategoryInput(_Strict):
    name: str
    type: Literal["category"] = "category"
    description: str
    required: bool
    categories: list[str] = Field(description="known values, in their canonical (normalised) spelling")
    aliases: dict[str, str] = Field(
        default_factory=dict, description="normalised alternative spelling -> canonical category"
    )


class TextInput(_Strict):
    """Free text (e.g. a vehicle's model name): never rejected for being new; the encoding reads tokens."""

    name: str
    type: Literal["text"] = "text"
    description: str
    required: bool
    max_length: int = 200


InputSpec = Annotated[NumericInput | CategoryInput | TextInput, Field(discriminator="type")]


class NumericColumn(_Strict):
    """Column = the input's value in its canonical unit; NaN when absent."""

    kind: Literal["numeric"] = "numeric"
    input: str


class OrdinalColumn(_Strict):
    """Column = codes[value]; ``unknown`` for a value not in codes, ``missing`` when absent."""

    kind: Literal["ordinal"] = "ordinal"
    input: str
    codes: dict[str, float]
    unknown: float
    missing: float


class IndicatorColumn(_Strict):
    """Column = 1.0 when the input equals ``value`` (one-hot), else 0.0; ``missing`` when absent."""

    kind: Literal["indicator"] = "indicator"
    input: str
    value: str
    missing: float = 0.0


class TokenColumn(_Strict):
    """Column = 1.0 when any of ``tokens`` is a word of the upper-cased text, else 0.0.

    Words are the text split on anything that is not a letter or a digit. ``missing`` when absent.
    """

    kind: Literal["token"] = "token"
    input: str
    tokens: list[str]
    missing: float = 0.0


ColumnSpec = Annotated[NumericColumn | OrdinalColumn | IndicatorColumn | TokenColumn, Field(discriminator="kind")]


class OnnxSpec(_Strict):
    file: str = "model.onnx"
    input_name: str = "X"
    output_name: str = Field(description="regression: predictions [n] or [n,1]; classification: [n,k]")
    opset: int


class RegressionOutput(_Strict):
    task: Literal["regression"] = "regression"
    name: str
    description: str
    unit: str
    floor: float | None = Field(
        default=None,
        description="no prediction or interval bound below this (a target that is never negative: 0); absent: none",
    )


class ClassificationOutput(_Strict):
    task: Literal["classification"] = "classification"
    name: str
    description: str
    classes: list[str]


OutputSpec = Annotated[RegressionOutput | ClassificationOutput, Field(discriminator="task")]


class ConformalSpec(_Strict):
    """Split-conformal tables, one per input pattern.

    A pattern key has one character per name in ``pattern_inputs``: ``1`` when the request gave that
    input, ``0`` when it did not (e.g. ``"000"`` = none of them). Regression scores: ``absolute``
    (interval = prediction ± q) or ``relative`` (prediction × (1 ± q)). Classification scores:
    ``lac`` (prediction set = classes whose probability ≥ 1 − q).
    """

    method: Literal["split"] = "split"
    score: Literal["absolute", "relative", "lac"]
    levels: list[float]
    pattern_inputs: list[str]
    pattern_names: dict[str, str] = Field(default_factory=dict)
    quantiles: dict[str, dict[str, float]]
    calibration_rows: dict[str, int]

    @model_validator(mode="after")
    def _complete(self) -> ConformalSpec:
        expected = 2 ** len(self.pattern_inputs)
        if len(self.quantiles) != expected:
            raise ValueError(f"conformal.quantiles has {len(self.quantiles)} patterns, expected {expected}")
        for key, table in self.quantiles.items():
            if len(key) != len(self.pattern_inputs) or set(key) - {"0", "1"}:
                raise ValueError(f"conformal pattern key {key!r} is not a 0/1 string")
            missing = {level_key(level) for level in self.levels} - set(table)
            if missing:
                raise ValueError(f"conformal pattern {key} lacks levels {sorted(missing)}")
        return self


def level_key(level: float) -> str:
    """The manifest's key for a confidence level: ``0.9`` -> ``"0.9"``."""
    return f"{level:g}"


class NumericHistogram(_Strict):
    kind: Literal["numeric"] = "numeric"
    edges: list[float]
    counts: list[int]


class CategoryHistogram(_Strict):
    kind: Literal["category"] = "category"
    shares: dict[str, float]


Histogram = Annotated[NumericHistogram | CategoryHistogram, Field(discriminator="kind")]


class DataFile(_Strict):
    path: str
    sha256: str
    rows: int


class Manifest(_Strict):
    format_version: Literal[1] = 1
    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,63}$")
    version: str = Field(pattern=r"^[0-9]+(\.[0-9]+)*([a-z0-9.+-]*)$")
    created: str
    description: str
    training_data: list[DataFile]
    seed: int
    inputs: list[InputSpec]
    output: OutputSpec
    columns: list[ColumnSpec] = Field(description="the ONNX input's columns, in order")
    onnx: OnnxSpec
    conformal: ConformalSpec
    example_request: dict[str, Any]
    metrics: dict[str, Any]
    reference_histograms: dict[str, Histogram]
    library_versions: dict[str, str]
    files: dict[str, str] = Field(description="file name -> sha256 of every other file in the folder")

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        names = [spec.name for spec in self.inputs]
        if len(set(names)) != len(names):
            raise ValueError("input names are not unique")
        known = set(names)
        for column in self.columns:
            if column.input not in known:
                raise ValueError(f"column reads unknown input {column.input!r}")
        for name in self.conformal.pattern_inputs:
            if name not in known:
                raise ValueError(f"conformal pattern input {name!r} is not an input")
        if self.onnx.file not in self.files:
            raise ValueError(f"files does not list the ONNX file {self.onnx.file!r}")
        if isinstance(self.output, ClassificationOutput) and self.conformal.score != "lac":
            raise ValueError("a classifier's conformal score must be 'lac'")
        if isinstance(self.output, RegressionOutput) and self.conformal.score == "lac":
            raise ValueError("a regressor's conformal score must be 'absolute' or 'relative'")
        return self

    def input(self, name: str) -> InputSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)
