import io
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from segnet.dataset import mat5
from segnet.errors import DatasetError
from tests.helpers import course_mat, mat_bytes, random_panels

# MATLAB-written files (MATLAB 5.3 to 7.4, both byte orders, compressed or not) that scipy tests itself with.
SCIPY_DATA = Path(scipy.io.__file__).parent / "matlab" / "tests" / "data"


def _loaded(data: bytes) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some of scipy's files warn about duplicate names
        contents = scipy.io.loadmat(io.BytesIO(data))
    return {key: repr(value) for key, value in contents.items() if not key.startswith("__")}


def _matlab_5_files() -> list[Path]:
    found = []
    for path in sorted(SCIPY_DATA.glob("*.mat")):
        data = path.read_bytes()
        try:
            _loaded(data)
        except Exception:  # noqa: BLE001 - files scipy itself refuses (its tests of broken input) prove nothing here
            continue
        if data[126:128] in (b"IM", b"MI"):  # MATLAB 5 header; MATLAB 4 files have none
            found.append(path)
    return found


@pytest.mark.skipif(not SCIPY_DATA.is_dir(), reason="scipy installed without its test data")
def test_matlab_written_files_inflate_to_files_that_load_identically():
    paths = _matlab_5_files()
    assert len(paths) > 50
    for path in paths:
        data = path.read_bytes()
        assert _loaded(mat5.inflate(data, path.name, max_bytes=1 << 26)) == _loaded(data), path.name


@pytest.mark.parametrize("compressed", [True, False])
def test_a_course_file_inflates_to_exactly_its_uncompressed_form(compressed):
    panels = random_panels(2, np.random.default_rng(0))
    plain = course_mat(*panels, do_compression=False)
    inflated = mat5.inflate(course_mat(*panels, do_compression=compressed), "x.mat", max_bytes=1 << 24)
    assert inflated[128:] == plain[128:]  # the 128-byte header differs only by savemat's time stamp


def test_a_variable_that_is_not_a_matrix_is_refused():
    data = course_mat(*random_panels(1, np.random.default_rng(0)))
    # Turn the first top-level tag (miMATRIX, 14) into miDOUBLE (9).
    broken = data[:128] + (9).to_bytes(4, "little") + data[132:]
    with pytest.raises(DatasetError, match=r"^x.mat: not a readable .* \(at byte 128: an element of type 9"):
        mat5.inflate(broken, "x.mat", max_bytes=1 << 24)


@pytest.mark.parametrize("data_type", [0, 8, 10, 11, 14, 15, 19, 32, 255])
def test_a_data_type_scipy_has_no_dtype_for_is_refused_before_it_crashes_loadmat(data_type):
    # Found by fuzzing: scipy 1.17's loadmat looks the type up unchecked and dies with a segmentation fault.
    data = bytearray(mat_bytes({"imgMat": np.zeros((2, 2), np.float32)}))
    pixels = data.index(struct.pack("<II", 7, 16))  # miSINGLE, 16 bytes
    data[pixels : pixels + 4] = struct.pack("<I", data_type)
    with pytest.raises(DatasetError, match=f"a part of data type {data_type}, which the format does not have"):
        mat5.inflate(bytes(data), "x.mat", max_bytes=1 << 20)
