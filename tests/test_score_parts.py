"""Joining Parquet parts without decoding them (``score.parquet_parts``) and the Thrift codec under it."""

from __future__ import annotations

import struct
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tabserve.errors import ScoreInputError
from tabserve.score import parquet_parts, thrift_compact
from tabserve.score.writer import BatchWriter, encode_part

SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64()),
        pa.field("name", pa.string()),
        pa.field("x", pa.float64()),
        pa.field("flag", pa.bool_()),
        pa.field("tags", pa.list_(pa.string())),
        pa.field("when", pa.timestamp("us", tz="UTC")),
        pa.field("where", pa.struct([pa.field("lat", pa.float64()), pa.field("lon", pa.float64())])),
    ]
)


def batch(start: int, rows: int) -> pa.RecordBatch:
    ids = list(range(start, start + rows))
    return pa.RecordBatch.from_pydict(
        {
            "id": ids,
            "name": [None if i % 7 == 0 else f"név-{i % 13}" for i in ids],
            "x": [i / 3 if i % 5 else None for i in ids],
            "flag": [i % 2 == 0 for i in ids],
            "tags": [[str(i % 3)] * (i % 4) for i in ids],
            "when": [1_700_000_000_000_000 + i for i in ids],
            "where": [{"lat": i / 7, "lon": -i / 11} for i in ids],
        },
        schema=SCHEMA,
    )


def footer_bytes(data: bytes) -> bytes:
    length = struct.unpack("<I", data[-8:-4])[0]
    return data[-8 - length : -8]


@pytest.mark.parametrize("rows", [0, 1, 1000])
def test_an_untouched_footer_encodes_to_the_bytes_it_came_from(rows: int) -> None:
    data = parquet_parts.encode_file(batch(0, rows))
    original = footer_bytes(data)
    assert thrift_compact.encode(thrift_compact.decode(original)) == original


def test_a_truncated_or_foreign_footer_is_a_clear_error() -> None:
    original = footer_bytes(parquet_parts.encode_file(batch(0, 10)))
    with pytest.raises(ScoreInputError, match="ends early"):
        thrift_compact.decode(original[: len(original) // 2])
    with pytest.raises(ScoreInputError, match="not a complete Parquet file"):
        parquet_parts.footer(b"CSV!", b"a,b\n1,2\n", 8, "x.parquet")


def test_joined_parts_read_back_as_the_batches_in_order(tmp_path: Path) -> None:
    sizes = [300, 1, 0, 4096, 77]
    batches, start = [], 0
    for size in sizes:
        batches.append(batch(start, size))
        start += size
    out = tmp_path / "joined.parquet"
    writer = BatchWriter(out, SCHEMA)
    for b in batches:
        writer.append(encode_part(b, "parquet"))
    writer.close()
    file = pq.ParquetFile(out)
    assert file.metadata.num_rows == sum(sizes)
    assert file.metadata.num_row_groups == len([s for s in sizes if s])
    assert file.schema_arrow == SCHEMA
    assert pq.read_table(out).equals(pa.Table.from_batches(batches, schema=SCHEMA))
    kept = [b for b in batches if b.num_rows]
    for i, b in enumerate(kept):  # each row group found where its offsets say
        assert file.read_row_group(i).equals(pa.Table.from_batches([b]))
    filtered = pq.read_table(out, filters=[("id", ">=", 4000)])  # statistics still right
    assert filtered.column("id").to_pylist() == list(range(4000, sum(sizes)))


def test_no_parts_give_an_empty_file_with_the_schema(tmp_path: Path) -> None:
    out = tmp_path / "empty.parquet"
    BatchWriter(out, SCHEMA).close()
    table = pq.read_table(out)
    assert table.num_rows == 0
    assert table.schema == SCHEMA


def test_a_resumed_file_keeps_its_row_groups_and_takes_more(tmp_path: Path) -> None:
    out = tmp_path / "resumed.parquet"
    first = BatchWriter(out, SCHEMA)
    first.write(batch(0, 500))
    first.write(batch(500, 250))
    first.close()
    again = BatchWriter(out, SCHEMA, resume_rows=750)
    again.write(batch(750, 100))
    again.close()
    whole = pa.Table.from_batches([batch(0, 500), batch(500, 250), batch(750, 100)])
    assert pq.read_table(out).equals(whole)
    assert pq.ParquetFile(out).metadata.num_row_groups == 3
    with pytest.raises(ScoreInputError, match="it has 850 rows, the checkpoint says 900"):
        BatchWriter(out, SCHEMA, resume_rows=900)


def test_a_file_cut_short_cannot_be_resumed(tmp_path: Path) -> None:
    out = tmp_path / "cut.parquet"
    writer = BatchWriter(out, SCHEMA)
    writer.write(batch(0, 100))
    writer.close()
    data = out.read_bytes()
    out.write_bytes(data[: len(data) - 20])
    with pytest.raises(ScoreInputError, match="cannot resume"):
        BatchWriter(out, SCHEMA, resume_rows=100)
