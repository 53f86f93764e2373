"""Reading a CSV or Parquet file as record batches of a fixed number of rows, streamed (never the whole file).

A CSV is read with every column as text (an empty cell is null), so a cell that is not what the model expects is
seen by the validator and rejected with its row, instead of failing the read of the whole file. Batches have
``batch_rows`` rows (fewer at the end of the file, or of a row group when workers read their own row groups,
``group_batches``); a resumed run goes on from the last complete batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from tabserve.errors import ScoreInputError

CSV_BLOCK_BYTES = 8 << 20


def file_format(path: Path) -> str:
    """``parquet`` or ``csv``, from the file name (``.parquet``/``.pq``, ``.csv``/``.txt``)."""
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".csv", ".txt"):
        return "csv"
    raise ScoreInputError(f"{path}: unknown file type {suffix or '(none)'}; use .csv or .parquet")


class BatchReader:
    """The batches of one input file, in order, with its schema (and row count when the format records it)."""

    def __init__(self, path: Path, batch_rows: int) -> None:
        if not path.is_file():
            raise ScoreInputError(f"{path}: no such file")
        self.path = path
        self.batch_rows = batch_rows
        self.format = file_format(path)
        self.total_rows: int | None = None
        self.group_rows: list[int] = []
        """The rows of each row group of a Parquet file (none for a CSV)."""
        try:
            if self.format == "parquet":
                meta = pq.ParquetFile(path)
                self.schema: pa.Schema = meta.schema_arrow
                self.total_rows = meta.metadata.num_rows
                self.group_rows = [meta.metadata.row_group(i).num_rows for i in range(meta.metadata.num_row_groups)]
            else:
                names = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=1 << 16)).schema.names
                self.schema = pa.schema([pa.field(n, pa.string()) for n in names])
        except (pa.ArrowInvalid, OSError) as exc:
            raise ScoreInputError(f"{path}: cannot be read as {self.format}: {exc}") from exc

    def _raw(self) -> Iterator[pa.RecordBatch]:
        if self.format == "parquet":
            yield from pq.ParquetFile(self.path).iter_batches(batch_size=self.batch_rows)
            return
        convert = pacsv.ConvertOptions(
            column_types=dict(zip(self.schema.names, self.schema.types, strict=True)),
            strings_can_be_null=True,
            null_values=[""],
        )
        reader = pacsv.open_csv(
            self.path, read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES), convert_options=convert
        )
        yield from reader

    def most_batches(self) -> int:
        """At most how many batches ``batches()`` yields: from the row count a Parquet file records, or from a
        CSV's size (a row takes at least one byte per column: a separator, or the end of the line)."""
        rows = self.total_rows
        if rows is None:
            rows = self.path.stat().st_size // max(1, len(self.schema.names))
        return -(-rows // self.batch_rows)

    def batches(self, skip_rows: int = 0) -> Iterator[pa.RecordBatch]:
        """Batches of ``batch_rows`` rows after the first ``skip_rows`` rows."""
        return _rechunk(self._raw(), self.batch_rows, skip_rows, self.schema, self.path)

    def groups(self, skip_rows: int = 0) -> Iterator[tuple[int, int, int]]:
        """(row group, rows of it to skip, file row of its first row read) of every row group after ``skip_rows``."""
        first = 0
        for group, rows in enumerate(self.group_rows):
            if first + rows > skip_rows:
                skip = max(0, skip_rows - first)
                yield group, skip, first + skip
            first += rows


def group_batches(
    path: Path, group: int, skip_rows: int, batch_rows: int, schema: pa.Schema
) -> Iterator[pa.RecordBatch]:
    """The batches of one row group of a Parquet file after its first ``skip_rows`` rows, read where it is scored."""
    raw = pq.ParquetFile(path).iter_batches(batch_size=batch_rows, row_groups=[group], use_threads=False)
    return _rechunk(raw, batch_rows, skip_rows, schema, path)


def _rechunk(
    raw: Iterator[pa.RecordBatch], size: int, skip_rows: int, schema: pa.Schema, path: Path
) -> Iterator[pa.RecordBatch]:
    pending: list[pa.RecordBatch] = []
    held = 0
    to_skip = skip_rows
    try:
        for read in raw:
            part = read
            if to_skip:
                if part.num_rows <= to_skip:
                    to_skip -= part.num_rows
                    continue
                part = part.slice(to_skip)
                to_skip = 0
            pending.append(part)
            held += part.num_rows
            while held >= size:
                table = pa.Table.from_batches(pending, schema=schema)
                yield _one(table.slice(0, size), schema)
                rest = table.slice(size)
                pending = rest.to_batches() if rest.num_rows else []
                held = rest.num_rows
    except pa.ArrowInvalid as exc:
        raise ScoreInputError(f"{path}: cannot be read: {exc}") from exc
    if held:
        yield _one(pa.Table.from_batches(pending, schema=schema), schema)


def _one(table: pa.Table, schema: pa.Schema) -> pa.RecordBatch:
    combined = table.combine_chunks()
    if combined.num_rows == 0:
        return pa.RecordBatch.from_pylist([], schema=schema)
    return combined.to_batches(max_chunksize=combined.num_rows)[0]
