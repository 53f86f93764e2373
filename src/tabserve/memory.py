"""Giving start-up memory back once a worker is ready: the C heap's free pages, then the clean library pages.

Loading the models frees a lot of C heap (ONNX Runtime's conversion session, the parsed ONNX protobuf) that
glibc keeps in the process unless asked (``malloc_trim``). And importing the serving stack runs code (module
initialisers, ONNX Runtime's registration of every operator schema and kernel) whose pages stay mapped, counted
in the resident set, although nothing serving a request uses them again. They are clean pages of files:
dropping them from the process (``madvise(MADV_DONTNEED)``) loses nothing; a page touched again is mapped back
from the page cache (a minor fault, about a microsecond). Only read-only file mappings holding no private
(copy-on-write) page are dropped: writable ones and relocated read-only ones (RELRO) hold data that exists
nowhere else. Both are best effort: on anything but Linux with glibc they do nothing.

And for what follows: glibc serves allocations of at least ``M_MMAP_THRESHOLD`` bytes from their own mapping,
returned to the system when freed, but raises that threshold to the size of any such block freed (up to 32 MB).
After a few batch requests (request bodies of hundreds of kB, their columns and matrices), every later buffer of
that size comes from the heap, whose free holes stay resident: a worker grew from 86 to 122 MB over the bench's
batch points. Fixing the threshold (``mallopt``, which stops the raising) before the models load keeps the heap
compact: 108-110 MB, flat (set once ready only: 116-118 MB, start-up's large blocks already sat in the heap).
``tabserve serve`` does it first thing, and passes glibc's variables to the workers it spawns.
"""

from __future__ import annotations

import ctypes
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

MADV_DONTNEED = 4
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
_HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ \S+\s*(.*)$")
_NOT_CLEAN = ("Anonymous", "Private_Dirty", "Shared_Dirty", "Swap")


@dataclass(frozen=True, slots=True)
class Mapping:
    """One mapping of ``/proc/<pid>/smaps``: its address range, permissions, file and counters (kB)."""

    start: int
    end: int
    perms: str
    path: str
    kb: dict[str, int]

    @property
    def clean_file_text(self) -> bool:
        """A read-only mapping of a file that still exists, with every resident page identical to the file."""
        return (
            self.path.startswith("/")
            and not self.path.endswith(" (deleted)")
            and "w" not in self.perms
            and all(self.kb.get(key, 1) == 0 for key in _NOT_CLEAN)
        )


def parse_smaps(lines: Iterable[str]) -> Iterator[Mapping]:
    """The mappings of a ``smaps`` text; a field absent from a block is absent from ``kb``."""
    header: re.Match[str] | None = None
    kb: dict[str, int] = {}
    for line in lines:
        match = _HEADER.match(line)
        if match is not None:
            if header is not None:
                yield _mapping(header, kb)
            header, kb = match, {}
            continue
        key, _, rest = line.partition(":")
        fields = rest.split()
        if header is not None and len(fields) == 2 and fields[1] == "kB" and fields[0].isdigit():
            kb[key] = int(fields[0])
    if header is not None:
        yield _mapping(header, kb)


def _mapping(header: re.Match[str], kb: dict[str, int]) -> Mapping:
    return Mapping(int(header[1], 16), int(header[2], 16), header[3], header[4].strip(), kb)


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None)  # the symbols already loaded into the process: libc's among them
    except OSError:
        return None


def trim_heap() -> bool:
    """Return the C heap's free pages to the system (glibc ``malloc_trim(0)``); False when unavailable."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    if trim is None:  # not glibc (musl, macOS)
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    return True


def drop_clean_file_pages(smaps: Path = Path("/proc/self/smaps")) -> int:
    """Unmap the resident pages of this process's clean read-only file mappings; the kB dropped (0 when
    unavailable). Pages touched again come back from the page cache."""
    libc = _libc()
    madvise = getattr(libc, "madvise", None) if libc is not None else None
    if madvise is None:
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    try:
        with smaps.open(encoding="utf-8") as fh:
            mappings = [m for m in parse_smaps(fh) if m.clean_file_text and m.kb.get("Rss", 0) > 0]
    except OSError:
        return 0
    dropped = 0
    for mapping in mappings:
        if madvise(mapping.start, mapping.end - mapping.start, MADV_DONTNEED) == 0:
            dropped += mapping.kb["Rss"]
    return dropped


def fix_mmap_threshold(size: int) -> bool:
    """Allocations of ``size`` bytes or more get their own mapping from now on, whatever was freed before (glibc
    ``mallopt(M_MMAP_THRESHOLD)``); False when unavailable or refused."""
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None) if libc is not None else None
    if mallopt is None or size <= 0:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # The moving threshold also moved the trim threshold (to twice its value): start-up's large frees had left
    # it at megabytes, so the free top of the heap was never given back. Both as glibc starts them.
    return bool(mallopt(M_MMAP_THRESHOLD, size)) and bool(mallopt(M_TRIM_THRESHOLD, 2 * size))


def release_startup_memory(*, drop_file_pages: bool = True, mmap_threshold: int = 0) -> tuple[bool, int]:
    """Once the worker is loaded and warm: trim the C heap, then (``drop_file_pages``) drop the clean library
    pages; with ``mmap_threshold`` (bytes), fix glibc's mmap threshold for what follows. Returns (heap trimmed,
    kB of file pages dropped)."""
    if mmap_threshold > 0:
        fix_mmap_threshold(mmap_threshold)
    return trim_heap(), drop_clean_file_pages() if drop_file_pages else 0
