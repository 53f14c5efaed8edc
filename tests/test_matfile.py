import numpy as np
import pytest

from segnet.errors import DatasetError
from segnet.matfile import read_panels, write_panels
from tests.helpers import course_mat, mat_bytes, random_panels

RNG = np.random.default_rng(0)
IMAGES, MASKS = random_panels(5, RNG)
GOOD_IMG = IMAGES.transpose(1, 2, 3, 0)
GOOD_MASK = MASKS.transpose(1, 2, 0).astype(np.float32)


@pytest.mark.parametrize("compressed", [True, False])
def test_reads_course_layout_exactly(compressed):
    images, masks = read_panels(course_mat(IMAGES, MASKS, do_compression=compressed), "x.mat")
    assert images.shape == (5, 64, 64, 3) and images.dtype == np.float32
    assert masks.shape == (5, 64, 64) and masks.dtype == np.uint8
    np.testing.assert_array_equal(images, IMAGES)
    np.testing.assert_array_equal(masks, MASKS)


def test_write_then_read_round_trips_and_is_byte_stable():
    data = write_panels(IMAGES, MASKS)
    assert data == write_panels(IMAGES, MASKS)
    images, masks = read_panels(data, "x.mat")
    np.testing.assert_array_equal(images, IMAGES)
    np.testing.assert_array_equal(masks, MASKS)


def test_single_panel_file_keeps_its_panel_axis():
    images, masks = read_panels(course_mat(IMAGES[:1], MASKS[:1]), "one.mat")
    assert images.shape == (1, 64, 64, 3) and masks.shape == (1, 64, 64)


def _with(**changes):
    contents = {"imgMat": GOOD_IMG, "semanticMaskMat": GOOD_MASK}
    contents.update(changes)
    return mat_bytes({k: v for k, v in contents.items() if v is not None})


def _nan_image():
    image = GOOD_IMG.copy()
    image[0, 0, 0, 0] = np.nan
    return image


@pytest.mark.parametrize(
    "data, problem",
    [
        (b"this is not a mat file at all" * 10, "not a readable MATLAB 5"),
        (b"", "not a readable MATLAB 5"),
        (_with(imgMat=None), "missing the key 'imgMat'"),
        (_with(semanticMaskMat=None), "missing the key 'semanticMaskMat'"),
        (_with(imgMat=GOOD_IMG[..., :2, :]), "expected \\(H, W, 3, N\\)"),
        (_with(semanticMaskMat=GOOD_MASK[..., :4]), "disagree"),
        (_with(semanticMaskMat=GOOD_MASK[:32]), "disagree"),
        (_with(imgMat=GOOD_IMG * 2), "expected \\[0, 1\\]"),
        (_with(imgMat=GOOD_IMG - 0.5), "expected \\[0, 1\\]"),
        (_with(imgMat=_nan_image()), "NaN or infinite"),
        (_with(semanticMaskMat=GOOD_MASK + 0.5), "not integers"),
        (_with(semanticMaskMat=GOOD_MASK + 11), "expected 0-10"),
        (_with(semanticMaskMat=GOOD_MASK - 1), "expected 0-10"),
        (_with(imgMat=(GOOD_IMG * 255).astype(np.uint8)), "dtype uint8"),
        (_with(semanticMaskMat=np.array(["abc"])), "dtype"),
    ],
)
def test_bad_files_raise_a_clear_error_naming_the_file(data, problem):
    with pytest.raises(DatasetError, match=problem) as caught:
        read_panels(data, "archive.zip:batch00007.mat")
    assert str(caught.value).startswith("archive.zip:batch00007.mat: ")


def test_truncated_file_is_reported():
    data = course_mat(IMAGES, MASKS)
    with pytest.raises(DatasetError, match="batch00001.mat"):
        read_panels(data[: len(data) // 2], "batch00001.mat")


def test_matlab_73_hdf5_file_is_named_as_unsupported():
    header = b"MATLAB 7.3 MAT-file".ljust(116) + b"\x00" * 8 + b"\x00\x02IM"
    data = header + b"\x00" * 384 + b"\x89HDF\r\n\x1a\n" + b"\x00" * 64
    with pytest.raises(DatasetError, match="7.3"):
        read_panels(data, "testset001.mat")
