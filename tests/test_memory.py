"""Resident memory of a worker: sessions opened from the ORT format, start-up memory given back once ready."""

from __future__ import annotations

import ctypes
import gc
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from conftest import MODELS, varied_co2_instances
from tabserve.artifacts import VerifiedModel, verify_model_dir
from tabserve.errors import ArtifactError
from tabserve.memory import Mapping, drop_clean_file_pages, parse_smaps, trim_heap
from tabserve.registry import load_serving_model
from tabserve.runtime import OnnxModel, open_session, session_options

GLIBC = sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "mallinfo2")
CO2 = MODELS / "co2" / "1.0.0"
PENGUINS = MODELS / "penguins" / "1.0.0"


def _co2_matrix(n: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    """Encoded co2 rows with the fuel figures dropped in every combination (both branches of the graph's If)."""
    model = load_serving_model(CO2, strict_fields=True, warmup=False)
    instances = varied_co2_instances(model.manifest.example_request, n, seed=11)
    rows = [model.runtime.encoder.encode_row(model.validator.one(row).values) for row in instances]
    return np.vstack(rows)


def _onnx_file_session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), sess_options=session_options(1), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("model_dir", [CO2, PENGUINS], ids=["co2", "penguins"])
def test_session_opened_from_ort_format_answers_bitwise_like_the_onnx_file(model_dir: Path) -> None:
    verified = verify_model_dir(model_dir)
    session, form = open_session(verified.onnx_bytes())
    assert form == "ort"
    reference = _onnx_file_session(verified.onnx_path)
    name = verified.manifest.onnx.input_name
    if model_dir == CO2:
        matrix = _co2_matrix(300)
    else:
        width = reference.get_inputs()[0].shape[1]
        matrix = np.random.default_rng(3).normal(size=(300, width)).astype(np.float32)
    expected = reference.run(None, {name: matrix})
    got = session.run(None, {name: matrix})
    for want, have in zip(expected, got, strict=True):
        np.testing.assert_array_equal(have, want)
    for i in range(0, 300, 37):  # one row alone too (the latency path)
        np.testing.assert_array_equal(session.run(None, {name: matrix[i : i + 1]})[0], expected[0][i : i + 1])


def test_session_falls_back_to_the_onnx_file_without_a_temporary_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    model = OnnxModel(verify_model_dir(CO2))
    assert model.session_format == "onnx"
    matrix = _co2_matrix(50)
    expected = _onnx_file_session(CO2 / "model.onnx").run(None, {"X": matrix})[0]
    np.testing.assert_array_equal(model.run(matrix), expected[:, 0])


def test_unloadable_onnx_still_names_the_file(tmp_path: Path) -> None:
    verified = verify_model_dir(CO2)
    junk = b"not a protobuf"
    (tmp_path / verified.manifest.onnx.file).write_bytes(junk)
    files = {**verified.manifest.files, verified.manifest.onnx.file: hashlib.sha256(junk).hexdigest()}
    manifest = verified.manifest.model_copy(update={"files": files})  # a sealed but unloadable graph
    with pytest.raises(ArtifactError, match=r"model\.onnx: ONNX Runtime cannot load it"):
        OnnxModel(VerifiedModel(tmp_path, manifest))


class _MallInfo2(ctypes.Structure):
    _fields_ = [  # ctypes' own declaration
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


def _heap_in_use() -> int:
    mallinfo2 = ctypes.CDLL(None).mallinfo2
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return int(info.uordblks + info.hblkhd)


@pytest.mark.skipif(not GLIBC, reason="glibc's mallinfo2 measures the C heap")
def test_ort_format_session_holds_less_than_half_the_heap_of_the_onnx_file() -> None:
    """ONNX Runtime keeps the loaded NodeProtos of an ONNX file for the session's lifetime: for co2's tree
    ensembles a second copy of the model (15 MB of live heap vs 6.5 MB). If a release fixes that, this fails and
    the conversion in ``open_session`` can go."""
    path = CO2 / "model.onnx"
    gc.collect()
    before = _heap_in_use()
    onnx_session = _onnx_file_session(path)
    onnx_bytes = _heap_in_use() - before
    del onnx_session
    graph = path.read_bytes()
    gc.collect()
    before = _heap_in_use()
    ort_session, form = open_session(graph)
    ort_bytes = _heap_in_use() - before
    assert form == "ort"
    assert onnx_bytes > 8 * 2**20, onnx_bytes
    assert ort_bytes < 0.5 * onnx_bytes, (ort_bytes, onnx_bytes)
    del ort_session


SMAPS = """\
55d0c0000000-55d0c0001000 r--p 00000000 08:01 123 /usr/bin/python3.11
Rss:                   4 kB
Anonymous:             0 kB
Private_Dirty:         0 kB
Shared_Dirty:          0 kB
Swap:                  0 kB
VmFlags: rd mr mw me
7f0000000000-7f0000200000 r-xp 00001000 08:01 456 /opt/lib/libonnxruntime.so
Rss:                1024 kB
Anonymous:             0 kB
Private_Dirty:         0 kB
Shared_Dirty:          0 kB
Swap:                  0 kB
7f0000200000-7f0000210000 r--p 00201000 08:01 456 /opt/lib/libonnxruntime.so
Rss:                  64 kB
Anonymous:            64 kB
Private_Dirty:        64 kB
Shared_Dirty:          0 kB
Swap:                  0 kB
7f0000210000-7f0000220000 rw-p 00211000 08:01 456 /opt/lib/libonnxruntime.so
Rss:                  64 kB
Anonymous:             0 kB
Private_Dirty:         0 kB
Shared_Dirty:          0 kB
Swap:                  0 kB
7f0000300000-7f0000400000 rw-p 00000000 00:00 0
Rss:                1024 kB
Anonymous:          1024 kB
Private_Dirty:      1024 kB
Shared_Dirty:          0 kB
Swap:                  0 kB
7f0000400000-7f0000401000 r-xs 00000000 00:01 9 /memfd:trampoline (deleted)
Rss:                   4 kB
Anonymous:             0 kB
Private_Dirty:         0 kB
Shared_Dirty:          0 kB
Swap:                  0 kB
7f0000500000-7f0000501000 r-xp 00000000 08:01 789 /opt/lib/libpartial.so
Rss:                   4 kB
Anonymous:             0 kB
"""


def test_smaps_parsed_and_only_clean_read_only_file_mappings_droppable() -> None:
    mappings = list(parse_smaps(SMAPS.splitlines(keepends=True)))
    assert [m.start for m in mappings] == [
        0x55D0C0000000,
        0x7F0000000000,
        0x7F0000200000,
        0x7F0000210000,
        0x7F0000300000,
        0x7F0000400000,
        0x7F0000500000,
    ]
    assert mappings[1] == Mapping(
        0x7F0000000000,
        0x7F0000200000,
        "r-xp",
        "/opt/lib/libonnxruntime.so",
        {"Rss": 1024, "Anonymous": 0, "Private_Dirty": 0, "Shared_Dirty": 0, "Swap": 0},
    )
    assert mappings[4].path == ""
    # text and read-only data: yes; RELRO (copy-on-write pages), writable, anonymous, deleted files, and a block
    # whose counters are not all there (cannot be known clean): no
    assert [m.clean_file_text for m in mappings] == [True, True, False, False, False, False, False]


_CHILD = """
import json, sys
import numpy as np
from pathlib import Path
from tabserve.memory import drop_clean_file_pages, trim_heap
from tabserve.runtime import open_session

def rss_file():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])

session, _ = open_session(Path(sys.argv[1]).read_bytes())
x = np.zeros((4, session.get_inputs()[0].shape[1]), dtype=np.float32)
first = session.run(None, {"X": x})[0]
before = rss_file()
dropped = drop_clean_file_pages()
after = rss_file()
again = session.run(None, {"X": x})[0]  # the code comes back from the page cache
print(json.dumps({"before": before, "after": after, "dropped": dropped, "trimmed": trim_heap(),
                  "same": bool((first == again).all())}))
"""


@pytest.mark.skipif(not GLIBC, reason="madvise through glibc, smaps from Linux")
def test_clean_file_pages_dropped_from_the_resident_set_and_the_process_keeps_working() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(CO2 / "model.onnx")], capture_output=True, text=True, check=True, timeout=60
    )
    result = json.loads(done.stdout)
    assert result["same"] is True
    assert result["trimmed"] is True
    assert result["dropped"] > 20_000, result  # kB: numpy's and ONNX Runtime's libraries at least
    assert result["after"] < result["before"] - 20_000, result


def test_nothing_dropped_when_smaps_unreadable(tmp_path: Path) -> None:
    assert drop_clean_file_pages(tmp_path / "absent") == 0


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's")
def test_heap_trimmed_on_glibc() -> None:
    assert trim_heap() is True


_MMAP_CHILD = """
import ctypes, sys
from tabserve.memory import fix_mmap_threshold
FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in FIELDS]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
fixed = fix_mmap_threshold(128 * 1024) if sys.argv[1] == "fix" else False
big = bytearray(4_000_000)  # freed: glibc's moving threshold rises to its size
del big
buffers = [bytearray(300_000) for _ in range(20)]
print(int(fixed), libc.mallinfo2().hblks)
"""


@pytest.mark.skipif(not GLIBC, reason="mallopt and mallinfo2 are glibc's")
def test_fixed_mmap_threshold_keeps_large_buffers_in_their_own_mappings() -> None:
    """Without the fix, a freed 4 MB block raises glibc's threshold and the 300 kB buffers land in the heap (whose
    holes stay resident); with it, each gets a mapping that goes back to the system when freed."""
    counts = {}
    for mode in ("fix", "default", "env"):
        env = dict(os.environ)
        env.pop("MALLOC_MMAP_THRESHOLD_", None)
        if mode == "env":  # how `tabserve serve` passes it to the workers it spawns
            env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
        done = subprocess.run(
            [sys.executable, "-c", _MMAP_CHILD, mode], capture_output=True, text=True, check=True, env=env
        )
        fixed, mapped = map(int, done.stdout.split())
        counts[mode] = (fixed, mapped)
    assert counts["fix"][0] == 1 and counts["fix"][1] >= 20, counts
    assert counts["default"][0] == 0 and counts["default"][1] < 20, counts
    assert counts["env"][1] >= 20, counts
