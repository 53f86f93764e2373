"""One Parquet file from many small ones, by copying their row groups' bytes and rebuilding the footer.

Each worker process encodes its scored batches as a small Parquet file of its own and decodes its footer
(``encode``), so the costly part of writing (dictionary, statistics, compression) runs on every core. The parent
appends each part's row groups to the output as they are (no decoding) and keeps their metadata with every byte
offset moved to where the bytes landed; closing writes one footer for all of them. pyarrow has no call for this
(apache/arrow #39671, #42896; arrow-rs calls it splicing), so the footer is edited as Thrift
(``score.thrift_compact``).

A closed file is a plain Parquet file. A resumed run reads its footer, cuts the file back to its last row group
and appends after it: the rows already written are never encoded again.
"""

from __future__ import annotations

import copy
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from tabserve.errors import ScoreInputError
from tabserve.score import thrift_compact as thrift

MAGIC = b"PAR1"
COMPRESSION = "zstd"
# field ids in parquet.thrift (FileMetaData, RowGroup, ColumnChunk, ColumnMetaData)
FILE_NUM_ROWS, FILE_ROW_GROUPS = 3, 4
GROUP_COLUMNS, GROUP_FILE_OFFSET, GROUP_ORDINAL = 1, 5, 7
CHUNK_FILE_OFFSET, CHUNK_META, CHUNK_OFFSET_INDEX, CHUNK_COLUMN_INDEX = 2, 3, 4, 6
META_OFFSETS = (9, 10, 11, 14)
"""ColumnMetaData's data page, index page, dictionary page and bloom filter offsets."""
ORDINAL_MAX = (1 << 15) - 1


def encode_file(batch: pa.RecordBatch | pa.Table) -> bytes:
    """``batch`` as a Parquet file in memory (one row group; none when it has no rows)."""
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, batch.schema, compression=COMPRESSION) as writer:
        if batch.num_rows:
            writer.write(batch)
    return bytes(sink.getvalue())


def encode(batch: pa.RecordBatch) -> tuple[bytes, list[thrift.Struct]]:
    """``batch`` as row groups: their bytes and their metadata, offsets counted from the first byte returned."""
    data = encode_file(batch)
    meta, start = _part_footer(data)
    groups = _groups(meta)
    for group in groups:
        shift(group, -len(MAGIC))
    return data[len(MAGIC) : start], groups


def footer(head: bytes, tail: bytes, size: int, name: str) -> tuple[thrift.Struct, int]:
    """The decoded footer of a Parquet file of ``size`` bytes, from its first 4 and last bytes, and where it starts."""
    if size < 12 or head[:4] != MAGIC or tail[-4:] != MAGIC:
        raise ScoreInputError(f"{name}: not a complete Parquet file (the run was killed, not interrupted?)")
    length = struct.unpack("<I", tail[-8:-4])[0]
    start = size - 8 - length
    if start < 4 or length + 8 > len(tail):
        raise ScoreInputError(f"{name}: a Parquet footer of {length} bytes does not fit the file")
    return thrift.decode(tail[len(tail) - 8 - length : -8]), start


def _part_footer(part: bytes) -> tuple[thrift.Struct, int]:
    return footer(part[:4], part, len(part), "a scored part")


def _groups(meta: thrift.Struct) -> list[thrift.Struct]:
    groups = meta.get(FILE_ROW_GROUPS)
    return [] if groups is None else list(groups.items)


def _move(target: thrift.Struct, field_id: int, by: int) -> None:
    found = target.fields.get(field_id)
    if found is not None:
        found.value += by


def shift(group: thrift.Struct, by: int) -> None:
    """Every byte offset in a row group's metadata moved by ``by`` (in place)."""
    _move(group, GROUP_FILE_OFFSET, by)
    for chunk in group.get(GROUP_COLUMNS).items:
        for field_id in (CHUNK_FILE_OFFSET, CHUNK_OFFSET_INDEX, CHUNK_COLUMN_INDEX):
            _move(chunk, field_id, by)
        meta = chunk.get(CHUNK_META)
        if meta is not None:
            for field_id in META_OFFSETS:
                _move(meta, field_id, by)


class ParquetParts:
    """A Parquet file being assembled from parts of one schema; valid once closed."""

    def __init__(self, path: Path, schema: pa.Schema, *, resume_rows: int | None = None) -> None:
        self.path = path
        empty = encode_file(pa.Table.from_pylist([], schema=schema))
        self.template = _part_footer(empty)[0]
        self.columns = pq.read_metadata(pa.BufferReader(empty)).num_columns
        """Leaf columns: a struct column has one per field."""
        self.groups: list[thrift.Struct] = []
        self.rows = 0
        self._file: BinaryIO
        if resume_rows is None:
            self._file = path.open("wb")
            self._file.write(MAGIC)
        else:
            self._file = self._reopen(resume_rows)

    def _reopen(self, rows: int) -> BinaryIO:
        name = f"{self.path}: cannot resume"
        if not self.path.is_file():
            raise ScoreInputError(f"{name}: the file is gone")
        size = self.path.stat().st_size
        with self.path.open("rb") as f:
            head = f.read(4)
            f.seek(max(0, size - 8))
            length = struct.unpack("<I", f.read(8)[:4].ljust(4, b"\0"))[0]
            f.seek(max(0, size - 8 - length))
            tail = f.read()
        meta, start = footer(head, tail, size, name)
        found = meta.get(FILE_NUM_ROWS)
        if found != rows:
            raise ScoreInputError(f"{name}: it has {found} rows, the checkpoint says {rows}")
        self.groups, self.rows = _groups(meta), rows
        os.truncate(self.path, start)
        handle = self.path.open("r+b")
        handle.seek(start)
        return handle

    def append(self, write: Callable[[BinaryIO], None], groups: list[thrift.Struct], rows: int) -> None:
        """Row groups from ``encode``: ``write`` puts their bytes into the file, and their metadata is kept."""
        if not groups:
            return
        if any(len(g.get(GROUP_COLUMNS).items) != self.columns for g in groups):
            raise ScoreInputError(f"{self.path}: a scored part has other columns than the file")
        by = self._file.tell()
        write(self._file)
        for group in groups:
            shift(group, by)
            self.groups.append(group)
        self.rows += rows

    def written(self) -> int:
        """Bytes written so far (the footer comes at close)."""
        return self._file.tell()

    def close(self) -> None:
        if self._file.closed:
            return
        meta = copy.copy(self.template)
        meta.fields = dict(self.template.fields)
        for ordinal, group in enumerate(self.groups):  # a part's ordinals count from 0: number them again
            if GROUP_ORDINAL in group.fields:
                if ordinal <= ORDINAL_MAX:
                    group.set(GROUP_ORDINAL, thrift.I16, ordinal)
                else:
                    del group.fields[GROUP_ORDINAL]
        meta.set(FILE_NUM_ROWS, thrift.I64, self.rows)
        meta.set(FILE_ROW_GROUPS, thrift.LIST, thrift.Sequence(thrift.STRUCT, self.groups))
        meta.fields = dict(sorted(meta.fields.items()))
        body = thrift.encode(meta)
        self._file.write(body + struct.pack("<I", len(body)) + MAGIC)
        self._file.close()
