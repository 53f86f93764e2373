"""Reading a CSV or Parquet file as record batches of a fixed number of rows, streamed (never the whole file).

A CSV is read with every column as text (an empty cell is null), so a cell that is not what the model expects is
seen by the validator and rejected with its row, instead of failing the read of the whole file. Batches have
exactly ``batch_rows`` rows (the last one fewer), so a resumed run cuts the file where the first run did.
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
        try:
            if self.format == "parquet":
                meta = pq.ParquetFile(path)
                self.schema: pa.Schema = meta.schema_arrow
                self.total_rows = meta.metadata.num_rows
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

    def batches(self, skip_rows: int = 0) -> Iterator[pa.RecordBatch]:
        """Batches of ``batch_rows`` rows after the first ``skip_rows`` rows."""
        size = self.batch_rows
        pending: list[pa.RecordBatch] = []
        held = 0
        to_skip = skip_rows
        try:
            for raw in self._raw():
                part = raw
                if to_skip:
                    if part.num_rows <= to_skip:
                        to_skip -= part.num_rows
                        continue
                    part = part.slice(to_skip)
                    to_skip = 0
                pending.append(part)
                held += part.num_rows
                while held >= size:
                    table = pa.Table.from_batches(pending, schema=self.schema)
                    yield _one(table.slice(0, size), self.schema)
                    rest = table.slice(size)
                    pending = rest.to_batches() if rest.num_rows else []
                    held = rest.num_rows
        except pa.ArrowInvalid as exc:
            raise ScoreInputError(f"{self.path}: cannot be read: {exc}") from exc
        if held:
            yield _one(pa.Table.from_batches(pending, schema=self.schema), self.schema)


def _one(table: pa.Table, schema: pa.Schema) -> pa.RecordBatch:
    combined = table.combine_chunks()
    if combined.num_rows == 0:
        return pa.RecordBatch.from_pylist([], schema=schema)
    return combined.to_batches(max_chunksize=combined.num_rows)[0]
