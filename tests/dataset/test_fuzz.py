"""Fuzzing the readers: whatever bytes arrive, only DatasetError comes out, soon, within bounded memory.

Inputs are arbitrary bytes and valid .mat files and zips with random byte flips, overwritten 32-bit
words (where sizes and types live), truncations and insertions. The profile is derandomized, so a run
in CI explores the same examples every time; 2,000 per reader is enough to find again each bug this
fuzzing found: scipy's loadmat crashing on unknown data types (tests/test_mat5.py), and zipfile's
IndexError, NotImplementedError and UnicodeDecodeError on damaged archives (tests/test_archive.py).
"""

import contextlib
import io
import re
import signal
import struct
import tempfile
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segnet.dataset.archive import ArchiveLimits, index_archive, open_archive, read_member
from segnet.dataset.matfile import read_panels
from segnet.dataset.prepare import prepare_dataset
from segnet.errors import DatasetError
from tests.helpers import course_mat, random_panels, write_zip

settings.register_profile(
    "fuzz",
    derandomize=True,
    max_examples=2000,
    # No per-example deadline: a stall of the shared machine would fail an example for its time alone.
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ = settings.get_profile("fuzz")

MAX_BYTES = 1 << 20
LIMITS = ArchiveLimits(max_total_bytes=4 * MAX_BYTES, max_member_bytes=MAX_BYTES, max_compression_ratio=500)
# What one example may hold at once: the input, its inflated copy and the arrays, each below MAX_BYTES.
PEAK_BYTES = 16 * MAX_BYTES
SECONDS = 10

_PANELS = random_panels(2, np.random.default_rng(0))
MATS = [course_mat(*_PANELS, do_compression=False), course_mat(*_PANELS, do_compression=True)]


def _zip_bytes(mat: bytes, compression: int) -> bytes:
    buffer = io.BytesIO()
    write_zip(buffer, {"batch00001.mat": mat, "testset001.mat": mat}, compression=compression)
    return buffer.getvalue()


ZIPS = [_zip_bytes(mat, compression) for mat in MATS for compression in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)]


def _variable_starts(mat: bytes) -> list[int]:
    """Where each top-level element of a .mat file begins: its tag and the first parts' tags follow."""
    starts, position = [], 128
    while position < len(mat):
        starts.append(position)
        position += 8 + struct.unpack_from("<I", mat, position + 4)[0]
    return starts


def _zip_headers(archive: bytes) -> list[int]:
    """Where the local headers, the central directory entries and its end record begin."""
    return [match.start() for match in re.finditer(rb"PK\x03\x04|PK\x01\x02|PK\x05\x06", archive)]


# Where sizes, types and offsets live, so mutations there reach past the first check.
HOT_SPOTS = {data: _variable_starts(data) for data in MATS} | {data: _zip_headers(data) for data in ZIPS}
# The 32-bit values that make sizes and types lie: zero, one, small types, huge and negative counts.
WORDS = st.sampled_from([0, 1, 5, 7, 9, 14, 15, 16, 0x7FFFFFF8, 0x80000000, 0xFFFFFFFF])


@st.composite
def mutated(draw, originals: list[bytes]) -> bytes:
    """One of `originals` with 1-3 random mutations, placed mostly in or near its headers."""
    original = draw(st.sampled_from(originals))
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 3))):
        if not data:
            break
        near_header = draw(st.sampled_from(HOT_SPOTS[original])) + 4 * draw(st.integers(0, 23))  # tags are 4-aligned
        where = min(draw(st.one_of(st.just(near_header), st.integers(0, len(data) - 1))), len(data) - 1)
        kind = draw(st.sampled_from(["flip", "word", "word", "truncate", "insert"]))
        if kind == "flip":
            data[where] ^= 1 << draw(st.integers(0, 7))
        elif kind == "word":
            data[where : where + 4] = draw(WORDS).to_bytes(4, "little")
        elif kind == "truncate":
            del data[where:]
        else:
            data[where:where] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


# Arbitrary bytes, and arbitrary bytes behind a valid MATLAB 5 header so that they reach the element parser.
ARBITRARY_MAT = st.one_of(st.binary(max_size=2048), st.binary(max_size=2048).map(lambda tail: MATS[0][:128] + tail))


@contextlib.contextmanager
def bounded(seconds: int = SECONDS, peak_bytes: int = PEAK_BYTES):
    """Fails the example if its body runs longer than `seconds` or holds more than `peak_bytes` at once."""

    def hang(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    tracemalloc.start()
    try:
        yield
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert peak < peak_bytes, f"held {peak:,} bytes at once"


def only_dataset_errors(function) -> None:
    """Runs function(); anything it raises other than DatasetError fails the example."""
    try:
        function()
    except DatasetError:
        pass


@FUZZ
@given(data=st.one_of(ARBITRARY_MAT, mutated(MATS)))
def test_mat_reader_raises_only_dataset_errors(data):
    with bounded():
        only_dataset_errors(lambda: read_panels(data, "fuzz.mat", max_bytes=MAX_BYTES))


def _read_archive(path: Path) -> None:
    with open_archive(path) as archive:
        index = index_archive(archive, "fuzz.zip", limits=LIMITS)
        for name in index.train + index.test:
            read_member(archive, name, "fuzz.zip", limits=LIMITS)


@FUZZ
@given(data=st.one_of(st.binary(max_size=2048), mutated(ZIPS)))
def test_zip_reader_and_prepare_raise_only_dataset_errors(data):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.zip"
        path.write_bytes(data)
        with bounded():
            only_dataset_errors(lambda: _read_archive(path))
            only_dataset_errors(lambda: prepare_dataset(path, Path(folder) / "out", limits=LIMITS))
