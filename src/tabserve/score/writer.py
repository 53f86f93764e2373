"""Writing scored rows and rejects as Parquet or CSV, batch by batch, each file valid whenever it is closed.

A resumed run opens the files again: a CSV is cut back to the size the checkpoint recorded (a batch half-written
when the run stopped hard is dropped) and appended to; a Parquet file, which cannot be appended to, is rewritten
from its complete batches into a new file that then takes more.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from tabserve.errors import ScoreInputError
from tabserve.score.reader import file_format


class BatchWriter:
    def __init__(self, path: Path, schema: pa.Schema, *, resume_rows: int | None = None, resume_bytes: int = 0) -> None:
        self.path = path
        self.schema = schema
        self.format = file_format(path)
        self.rows = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._parquet: pq.ParquetWriter | None = None
        self._csv: pacsv.CSVWriter | None = None
        self._sink: pa.OSFile | None = None
        if resume_rows is None:
            self._open(header=True)
        elif self.format == "csv":
            self._reopen_csv(resume_rows, resume_bytes)
        else:
            self._reopen_parquet(resume_rows)

    def _open(self, *, header: bool, mode: str = "wb") -> None:
        if self.format == "parquet":
            self._parquet = pq.ParquetWriter(self.path, self.schema, compression="zstd")
            return
        self._sink = pa.OSFile(str(self.path), mode)
        options = pacsv.WriteOptions(include_header=header)
        self._csv = pacsv.CSVWriter(self._sink, self.schema, write_options=options)

    def _reopen_csv(self, rows: int, size: int) -> None:
        if not self.path.is_file() or self.path.stat().st_size < size:
            raise ScoreInputError(f"{self.path}: cannot resume: the file is shorter than the checkpoint recorded")
        os.truncate(self.path, size)
        self.rows = rows
        self._open(header=size == 0, mode="ab")

    def _reopen_parquet(self, rows: int) -> None:
        try:
            old = pq.ParquetFile(self.path)
            found = old.metadata.num_rows
        except (OSError, pa.ArrowInvalid) as exc:
            raise ScoreInputError(
                f"{self.path}: cannot resume: the file was not closed (the run was killed, not interrupted); "
                "start again without --resume"
            ) from exc
        if found != rows:
            raise ScoreInputError(f"{self.path}: cannot resume: it has {found} rows, the checkpoint says {rows}")
        partial = self.path.with_name(self.path.name + ".resuming")
        self.path.replace(partial)
        self._open(header=True)
        for batch in pq.ParquetFile(partial).iter_batches(batch_size=1 << 16):
            self.write(batch)
        partial.unlink()

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        if self._parquet is not None:
            self._parquet.write_batch(batch)
        elif self._csv is not None:
            self._csv.write_batch(batch)
        self.rows += batch.num_rows

    def flush(self) -> int:
        """Bytes written so far (a CSV is flushed to the OS first)."""
        if self._sink is not None:
            self._sink.flush()
            return self.path.stat().st_size
        return 0

    def close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
            self._parquet = None
        if self._csv is not None:
            self._csv.close()
            self._csv = None
        if self._sink is not None:
            self._sink.close()
            self._sink = None
