import struct
import tracemalloc

import numpy as np
import pytest
import scipy.sparse

from segnet.dataset.matfile import read_panels, write_panels
from segnet.errors import DatasetError
from tests.helpers import course_mat, mat_bytes, random_panels

MAX_BYTES = 2**24
RNG = np.random.default_rng(0)
IMAGES, MASKS = random_panels(5, RNG)
GOOD_IMG = IMAGES.transpose(1, 2, 3, 0)
GOOD_MASK = MASKS.transpose(1, 2, 0).astype(np.float32)


@pytest.mark.parametrize("compressed", [True, False])
def test_reads_course_layout_exactly(compressed):
    images, masks = read_panels(course_mat(IMAGES, MASKS, do_compression=compressed), "x.mat", max_bytes=MAX_BYTES)
    assert images.shape == (5, 64, 64, 3) and images.dtype == np.float32
    assert masks.shape == (5, 64, 64) and masks.dtype == np.uint8
    np.testing.assert_array_equal(images, IMAGES)
    np.testing.assert_array_equal(masks, MASKS)


def test_write_then_read_round_trips_and_is_byte_stable():
    data = write_panels(IMAGES, MASKS)
    assert data == write_panels(IMAGES, MASKS)
    images, masks = read_panels(data, "x.mat", max_bytes=MAX_BYTES)
    np.testing.assert_array_equal(images, IMAGES)
    np.testing.assert_array_equal(masks, MASKS)


def test_single_panel_file_keeps_its_panel_axis():
    images, masks = read_panels(course_mat(IMAGES[:1], MASKS[:1]), "one.mat", max_bytes=MAX_BYTES)
    assert images.shape == (1, 64, 64, 3) and masks.shape == (1, 64, 64)


def _with(**changes):
    contents = {"imgMat": GOOD_IMG, "semanticMaskMat": GOOD_MASK}
    contents.update(changes)
    return mat_bytes({k: v for k, v in contents.items() if v is not None})


def _image_with(value):
    image = GOOD_IMG.copy()
    image[0, 0, 0, 0] = value
    return image


def _mask_with(value):
    mask = GOOD_MASK.copy()
    mask[0, 0, 0] = value
    return mask


def _cell():
    cell = np.empty((1, 2), dtype=object)
    cell[0, 0], cell[0, 1] = GOOD_IMG, GOOD_IMG
    return cell


@pytest.mark.parametrize(
    "data, problem",
    [
        (b"this is not a mat file at all" * 10, "not a readable MATLAB 5"),
        (b"", "not a readable MATLAB 5"),
        (_with(imgMat=None), "missing the key 'imgMat'"),
        (_with(semanticMaskMat=None), "missing the key 'semanticMaskMat'"),
        (_with(imgMat=GOOD_IMG[..., :2, :]), "expected \\(H, W, 3, N\\)"),
        (_with(semanticMaskMat=GOOD_MASK[..., :4]), "disagree"),  # N differs between the keys
        (_with(semanticMaskMat=GOOD_MASK[:32]), "disagree"),
        (_with(imgMat=GOOD_IMG * 2), "expected \\[0, 1\\]"),
        (_with(imgMat=GOOD_IMG - 0.5), "expected \\[0, 1\\]"),
        (_with(imgMat=_image_with(np.nan)), "NaN or infinite"),
        (_with(imgMat=_image_with(np.inf)), "NaN or infinite"),
        (_with(imgMat=_image_with(-np.inf)), "NaN or infinite"),
        (_with(semanticMaskMat=_mask_with(np.nan)), "not integers"),
        (_with(semanticMaskMat=_mask_with(np.inf)), "not integers"),
        (_with(imgMat=GOOD_IMG.astype(np.complex64)), "dtype complex64"),
        (_with(semanticMaskMat=GOOD_MASK + 0j), "dtype complex"),
        (_with(imgMat={"pixels": GOOD_IMG}), "'imgMat' is a MATLAB struct value"),
        (_with(imgMat=_cell()), "'imgMat' is a MATLAB cell value"),
        (_with(semanticMaskMat=scipy.sparse.csc_array(GOOD_MASK[..., 0])), "MATLAB sparse value"),
        (_with(semanticMaskMat=GOOD_MASK > 0), "MATLAB logical value"),
        (_with(imgMat=np.zeros((64, 64, 3, 0), np.float32), semanticMaskMat=np.zeros((64, 64, 0))), "no panels"),
        (_with(imgMat=np.zeros((0, 0)), semanticMaskMat=np.zeros((0, 0))), "expected \\(H, W, 3, N\\)"),
        (_with(imgMat=GOOD_IMG[:, :, 0, 0]), "expected \\(H, W, 3, N\\)"),
        (_with(semanticMaskMat=GOOD_MASK[..., 0]), "expected \\(H, W, N\\)"),
        (_with(semanticMaskMat=GOOD_MASK + 0.5), "not integers"),
        (_with(semanticMaskMat=GOOD_MASK + 11), "expected 0-10"),
        (_with(semanticMaskMat=GOOD_MASK - 1), "expected 0-10"),
        (_with(imgMat=(GOOD_IMG * 255).astype(np.uint8)), "dtype uint8"),
        (_with(semanticMaskMat=np.array(["abc"])), "MATLAB char value"),
    ],
)
def test_bad_files_raise_a_clear_error_naming_the_file(data, problem):
    with pytest.raises(DatasetError, match=problem) as caught:
        read_panels(data, "archive.zip:batch00007.mat", max_bytes=MAX_BYTES)
    assert str(caught.value).startswith("archive.zip:batch00007.mat: ")


@pytest.mark.parametrize("compressed", [True, False])
@pytest.mark.parametrize("keep", [0, 100, 128, 131, 200, 0.5, -8, -1])
def test_truncated_file_is_reported(compressed, keep):
    data = course_mat(IMAGES, MASKS, do_compression=compressed)
    cut = int(len(data) * keep) if isinstance(keep, float) else keep
    with pytest.raises(DatasetError, match="^batch00001.mat: "):
        read_panels(data[:cut], "batch00001.mat", max_bytes=MAX_BYTES)


def test_trailing_bytes_after_the_variables_are_refused():
    with pytest.raises(DatasetError, match="^x.mat: not a readable MATLAB 5 .mat file"):
        read_panels(course_mat(IMAGES, MASKS) + b"\0" * 12, "x.mat", max_bytes=MAX_BYTES)


def test_matlab_4_file_is_refused_by_name_with_the_way_out():
    data = mat_bytes({"imgMat": GOOD_IMG[..., 0, 0], "semanticMaskMat": GOOD_MASK[..., 0]}, format="4")
    with pytest.raises(DatasetError, match=r"^old.mat: .*it is a MATLAB 4 file; re-save it .*'-v7'"):
        read_panels(data, "old.mat", max_bytes=MAX_BYTES)


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\x00\xff\x00" + b"\x01" * 200,  # a type code out of MATLAB 4's range in either byte order
        b"\x00" * 4096,  # zeros: no name
        b"\x0a\x00\x00\x00" + b"\x01" * 200,  # a valid type code, then no NUL-terminated name
    ],
)
def test_other_bytes_with_a_zero_up_front_are_not_called_matlab_4(data):
    with pytest.raises(DatasetError, match=r"^x.mat: not a readable MATLAB 5 .mat file \(no MATLAB 5 header\)$"):
        read_panels(data, "x.mat", max_bytes=MAX_BYTES)


def _peak_bytes_while(function) -> int:
    """Runs function() and returns the most memory Python and NumPy held at once meanwhile."""
    tracemalloc.start()
    try:
        function()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def _refused(data: bytes, problem: str, max_bytes: int = MAX_BYTES) -> None:
    with pytest.raises(DatasetError, match=problem):
        read_panels(data, "bomb.mat", max_bytes=max_bytes)


def test_a_compressed_variable_that_inflates_past_the_limit_is_refused_without_inflating_it():
    # 34 MB of zeros compress to 34 kB; scipy.io.loadmat alone would allocate and fill all of it.
    zeros = np.zeros((64, 64, 3, 700), np.float32)
    data = mat_bytes({"imgMat": zeros}, do_compression=True)
    assert len(data) < zeros.nbytes / 500
    peak = _peak_bytes_while(lambda: _refused(data, "inflates to more than data.max_member_bytes=16,777,216"))
    assert peak < 3 * MAX_BYTES


def test_an_element_that_declares_more_bytes_than_follow_is_refused_before_anything_is_allocated():
    data = bytearray(mat_bytes({"imgMat": GOOD_IMG, "semanticMaskMat": GOOD_MASK}))
    # The first variable's pixel data: a miSINGLE (7) tag and its byte count, which loadmat would allocate.
    tag = data.index(struct.pack("<II", 7, GOOD_IMG.nbytes))
    data[tag + 4 : tag + 8] = struct.pack("<I", 0x7FFFFFF8)
    peak = _peak_bytes_while(lambda: _refused(bytes(data), "declares 2,147,483,640 bytes, only"))
    assert peak < 3 * len(data)


def test_the_limit_counts_every_variable_of_the_file():
    data = course_mat(IMAGES, MASKS, do_compression=True)
    read_panels(data, "x.mat", max_bytes=len(course_mat(IMAGES, MASKS)))
    _refused(data, "inflates to more than", max_bytes=len(course_mat(IMAGES, MASKS)) - 1)


def test_matlab_73_hdf5_file_is_named_as_unsupported_with_the_fix():
    header = b"MATLAB 7.3 MAT-file".ljust(116) + b"\x00" * 8 + b"\x00\x02IM"
    data = header + b"\x00" * 384 + b"\x89HDF\r\n\x1a\n" + b"\x00" * 64
    with pytest.raises(DatasetError, match="MATLAB 7.3 .* not supported; re-save it in MATLAB with save"):
        read_panels(data, "testset001.mat", max_bytes=MAX_BYTES)
