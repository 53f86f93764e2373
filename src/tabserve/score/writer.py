"""Writing scored rows and rejects as Parquet or CSV from parts encoded where they were scored, each file valid
whenever it is closed.

A part is one batch already encoded (``encode_part``: CSV text without the header, or a small Parquet file), made
by the worker process that scored the batch, so encoding runs on every core; the writer only appends bytes in
order (a Parquet part's row groups through ``score.parquet_parts``). A resumed run opens the files again: a CSV is
cut back to the size the checkpoint recorded (a batch half-written when the run stopped hard is dropped) and
appended to; a Parquet file is cut back to its last row group and appended to.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.csv as pacsv

from tabserve.errors import ScoreInputError
from tabserve.score import parquet_parts
from tabserve.score import thrift_compact as thrift
from tabserve.score.reader import file_format

COPY_BYTES = 1 << 20


@dataclass(slots=True)
class Encoded:
    """One batch encoded for one file: its bytes in memory or in a spool file, and (Parquet) its row groups."""

    rows: int
    data: bytes = b""
    spool: Path | None = None
    groups: list[thrift.Struct] = field(default_factory=list)

    def write_to(self, sink: BinaryIO) -> None:
        if self.spool is None:
            sink.write(self.data)
            return
        with self.spool.open("rb") as source:
            shutil.copyfileobj(source, sink, COPY_BYTES)
        self.spool.unlink()


def encode_part(batch: pa.RecordBatch, file_type: str, spool: Path | None = None) -> Encoded:
    """``batch`` encoded for a file of ``file_type`` (``parquet`` or ``csv``), kept in memory or, given ``spool``,
    written to that file (a worker's answer then stays small however many rows it scored)."""
    if batch.num_rows == 0:
        return Encoded(0)
    groups: list[thrift.Struct] = []
    if file_type == "parquet":
        data, groups = parquet_parts.encode(batch)
    else:
        data = _csv(batch, header=False)
    if spool is None:
        return Encoded(batch.num_rows, data, None, groups)
    spool.write_bytes(data)
    return Encoded(batch.num_rows, b"", spool, groups)


def _csv(batch: pa.RecordBatch | pa.Table, *, header: bool) -> bytes:
    sink = pa.BufferOutputStream()
    pacsv.write_csv(batch, sink, write_options=pacsv.WriteOptions(include_header=header))
    return bytes(sink.getvalue())


class BatchWriter:
    """One output file (scored rows or rejects) taking encoded parts in order."""

    def __init__(self, path: Path, schema: pa.Schema, *, resume_rows: int | None = None, resume_bytes: int = 0) -> None:
        self.path = path
        self.schema = schema
        self.format = file_format(path)
        self.rows = 0 if resume_rows is None else resume_rows
        path.parent.mkdir(parents=True, exist_ok=True)
        self._parquet: parquet_parts.ParquetParts | None = None
        self._csv: BinaryIO | None = None
        if self.format == "parquet":
            self._parquet = parquet_parts.ParquetParts(path, schema, resume_rows=resume_rows)
        elif resume_rows is None:
            self._csv = path.open("wb")
            self._csv.write(_csv(pa.Table.from_pylist([], schema=schema), header=True))
        else:
            self._csv = self._reopen_csv(resume_bytes)

    def _reopen_csv(self, size: int) -> BinaryIO:
        if not self.path.is_file() or self.path.stat().st_size < size:
            raise ScoreInputError(f"{self.path}: cannot resume: the file is shorter than the checkpoint recorded")
        os.truncate(self.path, size)
        handle = self.path.open("ab")
        if size == 0:
            handle.write(_csv(pa.Table.from_pylist([], schema=self.schema), header=True))
        return handle

    def append(self, part: Encoded) -> None:
        """A part from ``encode_part`` for this file's type."""
        if part.rows == 0:
            return
        if self._parquet is not None:
            self._parquet.append(part.write_to, part.groups, part.rows)
        elif self._csv is not None:
            part.write_to(self._csv)
        self.rows += part.rows

    def write(self, batch: pa.RecordBatch) -> None:
        """A batch encoded here (the one-process run and tests)."""
        self.append(encode_part(batch, self.format))

    def flush(self) -> int:
        """Bytes written so far (a CSV is flushed to the OS first; a Parquet file's footer comes at close)."""
        if self._csv is not None:
            self._csv.flush()
            return self._csv.tell()
        return self._parquet.written() if self._parquet is not None else 0

    def close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
            self._parquet = None
        if self._csv is not None:
            self._csv.close()
            self._csv = None
