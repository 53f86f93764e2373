"""The Thrift compact protocol, as far as a Parquet footer needs: bytes to a tree of numbered fields and back.

A Parquet footer (``FileMetaData``) is a Thrift struct in the compact protocol. Joining Parquet parts
(``score.parquet_parts``) only moves byte offsets inside it, so this module knows no Parquet names: it decodes any
struct into ``Struct`` (field id -> type and value, in wire order) and encodes it back the way every Thrift writer
does, so an untouched tree encodes to the very bytes it came from (a test checks that on pyarrow's footers).
The wire format: https://github.com/apache/thrift/blob/master/doc/specs/thrift-compact-protocol.md
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from tabserve.errors import ScoreInputError

STOP, TRUE, FALSE, BYTE, I16, I32, I64, DOUBLE, BINARY, LIST, SET, MAP, STRUCT, UUID = range(14)
_INTEGER = (I16, I32, I64)


@dataclass(slots=True)
class Field:
    kind: int
    value: Any
    """bool, int, float, bytes, ``Struct``, ``Sequence`` (list or set) or ``Mapping``."""


@dataclass(slots=True)
class Sequence:
    element: int
    items: list[Any]
    kind: int = LIST


@dataclass(slots=True)
class Mapping:
    key: int
    value: int
    items: list[tuple[Any, Any]]


@dataclass(slots=True)
class Struct:
    fields: dict[int, Field] = field(default_factory=dict)
    """By field id, in the order they were read (Thrift writers write them by increasing id)."""

    def get(self, field_id: int) -> Any:
        found = self.fields.get(field_id)
        return None if found is None else found.value

    def set(self, field_id: int, kind: int, value: Any) -> None:
        self.fields[field_id] = Field(kind, value)


class _Reader:
    def __init__(self, data: bytes | memoryview) -> None:
        self.data = bytes(data)
        self.at = 0

    def byte(self) -> int:
        try:
            value = self.data[self.at]
        except IndexError:
            raise ScoreInputError("a Parquet footer ends early (the file is cut short or not Parquet)") from None
        self.at += 1
        return value

    def varint(self) -> int:
        data, at = self.data, self.at
        result = shift = 0
        try:
            while True:
                b = data[at]
                at += 1
                result |= (b & 0x7F) << shift
                if not b & 0x80:
                    self.at = at
                    return result
                shift += 7
                if shift > 70:
                    raise ScoreInputError("a Parquet footer holds a malformed number")
        except IndexError:
            raise ScoreInputError("a Parquet footer ends early (the file is cut short or not Parquet)") from None

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def take(self, size: int) -> bytes:
        if size < 0 or self.at + size > len(self.data):
            raise ScoreInputError("a Parquet footer ends early (the file is cut short or not Parquet)")
        out = self.data[self.at : self.at + size]
        self.at += size
        return out

    def value(self, kind: int) -> Any:
        if kind in (TRUE, FALSE):  # a bool inside a list or map: one byte of its own
            return self.byte() == TRUE
        if kind == BYTE:
            return struct.unpack("b", self.take(1))[0]
        if kind in _INTEGER:
            return self.zigzag()
        if kind == DOUBLE:
            return struct.unpack("<d", self.take(8))[0]
        if kind == BINARY:
            return self.take(self.varint())
        if kind == UUID:
            return self.take(16)
        if kind in (LIST, SET):
            head = self.byte()
            size = head >> 4 if head >> 4 != 0x0F else self.varint()
            element = head & 0x0F
            return Sequence(element, [self.value(element) for _ in range(size)], kind)
        if kind == MAP:
            size = self.varint()
            if size == 0:
                return Mapping(0, 0, [])
            types = self.byte()
            key, val = types >> 4, types & 0x0F
            return Mapping(key, val, [(self.value(key), self.value(val)) for _ in range(size)])
        if kind == STRUCT:
            return self.struct()
        raise ScoreInputError(f"a Parquet footer holds an unknown Thrift type {kind}")

    def struct(self) -> Struct:
        out = Struct()
        last = 0
        while True:
            head = self.byte()
            kind = head & 0x0F
            if kind == STOP:
                return out
            delta = head >> 4
            last = last + delta if delta else self.zigzag()
            if kind in (TRUE, FALSE):
                out.fields[last] = Field(TRUE, kind == TRUE)
            else:
                out.fields[last] = Field(kind, self.value(kind))


def decode(data: bytes | memoryview) -> Struct:
    """The struct encoded in ``data`` (all of it)."""
    reader = _Reader(data)
    out = reader.struct()
    if reader.at != len(reader.data):
        raise ScoreInputError("a Parquet footer has bytes after its end")
    return out


class _Writer:
    def __init__(self) -> None:
        self.out = bytearray()

    def varint(self, n: int) -> None:
        while n > 0x7F:
            self.out.append((n & 0x7F) | 0x80)
            n >>= 7
        self.out.append(n)

    def zigzag(self, n: int) -> None:
        self.varint((n << 1) ^ (n >> 63))

    def value(self, kind: int, value: Any) -> None:
        if kind in (TRUE, FALSE):
            self.out.append(TRUE if value else FALSE)
        elif kind == BYTE:
            self.out += struct.pack("b", value)
        elif kind in _INTEGER:
            self.zigzag(value)
        elif kind == DOUBLE:
            self.out += struct.pack("<d", value)
        elif kind in (BINARY, UUID):
            if kind == BINARY:
                self.varint(len(value))
            self.out += value
        elif kind in (LIST, SET):
            size = len(value.items)
            if size < 0x0F:
                self.out.append(size << 4 | value.element)
            else:
                self.out.append(0xF0 | value.element)
                self.varint(size)
            for item in value.items:
                self.value(value.element, item)
        elif kind == MAP:
            self.varint(len(value.items))
            if value.items:
                self.out.append(value.key << 4 | value.value)
            for k, v in value.items:
                self.value(value.key, k)
                self.value(value.value, v)
        elif kind == STRUCT:
            self.struct(value)
        else:
            raise ScoreInputError(f"cannot write Thrift type {kind}")

    def struct(self, value: Struct) -> None:
        last = 0
        for field_id, item in value.fields.items():
            kind = (TRUE if item.value else FALSE) if item.kind in (TRUE, FALSE) else item.kind
            delta = field_id - last
            if 0 < delta <= 15:
                self.out.append(delta << 4 | kind)
            else:
                self.out.append(kind)
                self.zigzag(field_id)
            if kind not in (TRUE, FALSE):
                self.value(kind, item.value)
            last = field_id
        self.out.append(STOP)


def encode(value: Struct) -> bytes:
    writer = _Writer()
    writer.struct(value)
    return bytes(writer.out)
