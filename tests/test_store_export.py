"""export_log: the log + feedback in each model's training layout, readable by the training loaders."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

from conftest import data_dir
from tabserve.errors import StoreError
from tabserve.store import PredictionRecord
from tabserve.store.export import export_log, parse_since
from tabserve.store.sqlite import SqliteStore

NRCAN_HEADER = (
    "Model year,Make,Model,Vehicle class,Engine size (L),Cylinders,Transmission,Fuel type,City (L/100 km),"
    "Highway (L/100 km),Combined (L/100 km),Combined (mpg),CO2 emissions (g/km),CO2 rating,Smog rating"
)
PENGUINS_HEADER = "species,island,bill_length_mm,bill_depth_mm,flipper_length_mm,body_mass_g,sex,year"
CO2_INPUTS = {
    "make": "TOYOTA",
    "model": "RAV4 AWD",
    "vehicle_class": "SPORT UTILITY VEHICLE SMALL",
    "engine_size_l": 2.5,
    "cylinders": 4.0,
    "transmission": "AS8",
    "fuel_type": "X",
    "model_year": 2020.0,
    "fuel_consumption_city_l_per_100km": 8.9,
    "fuel_consumption_hwy_l_per_100km": 7.0,
    "fuel_consumption_comb_l_per_100km": 8.1,
}


def co2(request_id: str, inputs: dict[str, object], t: float = 1_700_000_000.0) -> PredictionRecord:
    return PredictionRecord(request_id, 0, t, "co2", "1.0.0", {}, inputs, 190.5, {"interval": {}}, [], False, 1.0)


def penguin(request_id: str, inputs: dict[str, object]) -> PredictionRecord:
    return PredictionRecord(
        request_id, 0, 1_700_000_000.0, "penguins", "1.0.0", {}, inputs, "Adelie", {"probabilities": {}}, [], False, 1.0
    )


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    s = SqliteStore(tmp_path / "log.sqlite")
    s.write([
        co2("a", CO2_INPUTS),
        co2("b", {**CO2_INPUTS, "cylinders": None, "fuel_consumption_city_l_per_100km": None}, t=1_700_000_001.0),
        co2("unlabelled", CO2_INPUTS, t=1_700_000_002.0),
        penguin("p1", {"island": "BISCOE", "sex": "FEMALE", "bill_length_mm": 39.1, "bill_depth_mm": 18.7,
                       "flipper_length_mm": 181.0, "body_mass_g": 3750.0}),
        penguin("p2", {"island": "NEWISLAND", "sex": None, "bill_length_mm": 40.0, "bill_depth_mm": 18.0,
                       "flipper_length_mm": 190.0, "body_mass_g": 4000.0}),
    ])  # fmt: skip
    s.attach_feedback("a", 0, 196.0)
    s.attach_feedback("b", 0, 201.5)
    s.attach_feedback("p1", 0, "Adelie")
    s.attach_feedback("p2", 0, "Gentoo")
    return s


def test_co2_export_uses_nrcan_layout_when_csv(store: SqliteStore, tmp_path: Path) -> None:
    out = tmp_path / "co2.csv"
    assert export_log(store, "co2", None, True, "csv", out) == 2
    lines = out.read_text().splitlines()
    assert lines[0] == NRCAN_HEADER
    assert lines[1] == "2020,TOYOTA,RAV4 AWD,SPORT UTILITY VEHICLE SMALL,2.5,4,AS8,X,8.9,7.0,8.1,35,196.0,,"
    assert lines[2] == "2020,TOYOTA,RAV4 AWD,SPORT UTILITY VEHICLE SMALL,2.5,,AS8,X,,7.0,8.1,35,201.5,,"


def test_co2_export_leaves_target_empty_when_unlabelled_included(store: SqliteStore, tmp_path: Path) -> None:
    out = tmp_path / "co2.csv"
    assert export_log(store, "co2", 1_700_000_001.5, False, "csv", out) == 1
    row = next(csv.DictReader(out.read_text().splitlines()))
    assert row["CO2 emissions (g/km)"] == ""


def test_co2_export_is_read_by_training_loader_when_extra(store: SqliteStore, tmp_path: Path) -> None:
    co2_data = pytest.importorskip("tabserve.training.co2_data")
    out = tmp_path / "co2.csv"
    export_log(store, "co2", None, True, "csv", out)
    assert ",".join(co2_data.OFFICIAL_COLUMNS) == NRCAN_HEADER
    loaded = co2_data.load(data_dir(), extra=out)
    extra = loaded.frame[loaded.frame["source"] == "extra"]
    assert sorted(extra["co2"].tolist()) == [196.0, 201.5]
    assert set(extra["make"]) == {"TOYOTA"}


def test_penguins_export_uses_package_layout_when_csv(store: SqliteStore, tmp_path: Path) -> None:
    out = tmp_path / "penguins.csv"
    assert export_log(store, "penguins", None, True, "csv", out) == 2
    lines = out.read_text().splitlines()
    assert lines[0] == PENGUINS_HEADER
    assert lines[1] == "Adelie,Biscoe,39.1,18.7,181,3750,female,NA"
    assert lines[2] == "Gentoo,NEWISLAND,40.0,18.0,190,4000,NA,NA"


def test_penguins_export_is_training_data_for_the_build(store: SqliteStore, tmp_path: Path) -> None:
    shipped = pytest.importorskip("tabserve.training.build.shipped")
    read = pytest.importorskip("tabserve.training.build.read")
    data = shipped.default_data("penguins")
    assert data.read_text().splitlines()[0] == PENGUINS_HEADER
    out = tmp_path / "penguins.csv"
    export_log(store, "penguins", None, True, "csv", out)
    frame, counts = read.read_tables([data, out])
    assert counts[1] == 2
    assert frame["species"].tolist()[counts[0] :] == ["Adelie", "Gentoo"]


def test_export_writes_typed_columns_when_parquet(store: SqliteStore, tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "co2.parquet"
    assert export_log(store, "co2", None, True, "parquet", out) == 2
    table = pq.read_table(out)
    assert ",".join(table.column_names) == NRCAN_HEADER
    assert str(table.schema.field("Model year").type) == "int64"
    assert table.column("Cylinders").to_pylist() == [4, None]
    assert table.column("CO2 emissions (g/km)").to_pylist() == [196.0, 201.5]
    assert table.column("CO2 rating").to_pylist() == [None, None]


def test_parquet_export_explains_when_pyarrow_missing(
    store: SqliteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(StoreError, match="pyarrow"):
        export_log(store, "co2", None, True, "parquet", tmp_path / "x.parquet")


def test_export_uses_generic_layout_when_model_unknown(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "log.sqlite")
    s.write([PredictionRecord("x", 0, 1.0, "other", "2.0.0", {}, {"b": 1.5, "a": "Q"}, 3.0, {}, [], False, 1.0)])
    out = tmp_path / "other.csv"
    assert export_log(s, "other", None, False, "csv", out) == 1
    assert out.read_text().splitlines() == [
        "request_id,index,time,model_version,a,b,prediction,actual",
        "x,0,1.0,2.0.0,Q,1.5,3,",
    ]


def test_parse_since_accepts_cli_forms_when_given() -> None:
    now = 1_800_000_000.0
    assert parse_since(None) is None
    assert parse_since("") is None
    assert parse_since("7d", now=now) == now - 7 * 86_400
    assert parse_since("12h", now=now) == now - 12 * 3_600
    assert parse_since("1700000000") == 1_700_000_000.0
    assert parse_since("2023-11-14T22:13:20Z") == 1_700_000_000.0
    assert parse_since("2023-11-14T22:13:20") == 1_700_000_000.0
    with pytest.raises(ValueError, match="since"):
        parse_since("last tuesday")
