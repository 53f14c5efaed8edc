import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from segnet.prediction import Picture, Unreadable, read_inputs
from segnet.prediction.images import MAX_PIXELS
from tests.helpers import course_mat, mat_bytes, random_panels
from tests.prediction.conftest import panel_bytes, write_image

PANEL = panel_bytes(1, seed=7)[0]


def read_one(path) -> Picture:
    (found,) = read_inputs([path])
    assert isinstance(found, Picture), found
    return found


def problem(path) -> str:
    (found,) = read_inputs([path])
    assert isinstance(found, Unreadable), found
    return found.problem


def test_a_grey_png_is_read_as_its_bytes_over_255(tmp_path):
    picture = read_one(write_image(tmp_path / "grey.png", PANEL[:50]))
    assert picture.name == "grey" and picture.source == str(tmp_path / "grey.png")
    assert picture.grey.dtype == np.float32 and picture.grey.shape == (50, 64)
    assert np.array_equal(picture.grey, PANEL[:50].astype(np.float32) / np.float32(255))


def test_colour_is_read_as_its_luminance_and_grey_in_three_channels_as_that_grey(tmp_path):
    grey = read_one(write_image(tmp_path / "grey.png", PANEL)).grey
    assert np.array_equal(read_one(write_image(tmp_path / "rgb.png", np.repeat(PANEL[..., None], 3, -1))).grey, grey)
    colours = np.zeros((2, 3, 3), dtype=np.uint8)
    colours[0] = np.eye(3, dtype=np.uint8) * 255  # pure red, green, blue
    colours[1] = [[200, 100, 50], [0, 0, 0], [255, 255, 255]]
    read = read_one(write_image(tmp_path / "colour.png", colours)).grey
    expected = colours.astype(float) @ [0.299, 0.587, 0.114] / 255
    np.testing.assert_allclose(read, expected, atol=0.5 / 255 + 1e-7)  # Pillow rounds to whole bytes


def test_a_jpeg_is_read_close_to_what_was_saved_and_as_a_camera_turned_it(tmp_path):
    smooth = np.add.outer(np.arange(48), np.arange(80)).astype(np.uint8)  # a gradient JPEG keeps well
    picture = read_one(write_image(tmp_path / "photo.jpg", smooth, quality=95))
    assert picture.name == "photo" and picture.grey.shape == (48, 80)
    assert np.abs(picture.grey * 255 - smooth).max() <= 3
    # EXIF orientation 6: the stored pixels are shown turned 90 degrees clockwise.
    exif = Image.Exif()
    exif[0x0112] = 6
    turned = read_one(write_image(tmp_path / "turned.jpg", smooth, quality=95, exif=exif)).grey
    assert turned.shape == (80, 48)
    assert np.abs(turned * 255 - np.rot90(smooth, k=-1)).max() <= 3


def test_a_16_bit_png_keeps_its_depth_and_transparency_is_white_paper(tmp_path):
    deep = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    picture = read_one(write_image(tmp_path / "deep.png", deep))
    np.testing.assert_allclose(picture.grey, deep / 65535, rtol=0, atol=1e-7)
    ink = np.zeros((20, 20, 4), dtype=np.uint8)
    ink[5:15, 8:12] = [0, 0, 0, 255]  # opaque black strokes, the rest fully transparent
    drawn = read_one(write_image(tmp_path / "drawn.png", ink)).grey
    assert drawn[5:15, 8:12].max() == 0 and drawn[:5].min() == 1 and drawn[:, :8].min() == 1


def test_each_panel_of_a_course_mat_file_is_a_picture_named_after_the_file(tmp_path):
    images, masks = random_panels(3, np.random.default_rng(0))
    path = tmp_path / "batch00001.mat"
    path.write_bytes(course_mat(images, masks))
    found = read_inputs([path])
    assert [picture.name for picture in found] == ["batch00001-000", "batch00001-001", "batch00001-002"]
    assert isinstance(found[1], Picture) and found[1].source == f"{path} panel 1 (batch00001-001)"
    for picture, image in zip(found, images, strict=True):
        assert isinstance(picture, Picture) and np.array_equal(picture.grey, image[..., 0])


def test_a_folder_is_read_in_name_order_without_its_sub_folders_hidden_files_or_predicts_outputs(tmp_path):
    for name in ("b.png", "a.jpg", "c.png", ".hidden.png", "c.mask.png", "c.overlay.png", "sub/d.png"):
        write_image(tmp_path / name, PANEL)
    assert [picture.name for picture in read_inputs([tmp_path])] == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.png", b"", "empty.png: an empty file (0 bytes)"),
        ("notes.txt", b"digits: 3, 7\n", "notes.txt: not a PNG or JPEG image"),
        ("scan.gif", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "scan.gif: not a PNG or JPEG image"),
        ("corrupt.png", None, "corrupt.png: a damaged image"),
        ("empty.mat", b"", "empty.mat: an empty file (0 bytes)"),
        ("garbage.mat", b"not a MATLAB file at all" * 10, "garbage.mat: not a readable MATLAB 5 .mat file"),
        ("other.mat", mat_bytes({"weights": np.ones((3, 3))}), "other.mat: missing the key 'imgMat'"),
    ],
)
def test_an_unreadable_file_is_one_line_naming_it_and_the_problem(tmp_path, name, content, message):
    path = tmp_path / name
    if content is None:  # a real PNG's header, then its pixel data overwritten
        write_image(path, PANEL)
        data = bytearray(path.read_bytes())
        data[60:] = bytes(len(data) - 60)
        content = bytes(data)
    path.write_bytes(content)
    line = problem(path)
    assert line.startswith(str(tmp_path / message.split(":")[0])) and message in line and "\n" not in line


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` grey pixels and holds none: what a decompression bomb shows first."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_a_missing_path_an_empty_folder_and_huge_images_are_named_and_the_rest_still_read(tmp_path):
    (tmp_path / "empty").mkdir()
    for name, size in [("wide.png", (MAX_PIXELS + 1, 1)), ("bomb.png", (20000, 20000)), ("edge.png", (4096, 4096))]:
        (tmp_path / name).write_bytes(png_header(*size))
    good = write_image(tmp_path / "good.png", PANEL)
    paths = [tmp_path / name for name in ("missing.png", "empty", "wide.png", "bomb.png", "edge.png")]
    found = read_inputs([*paths, good])
    problems = [item.problem for item in found if isinstance(item, Unreadable)]
    assert problems[0] == f"{tmp_path / 'missing.png'}: no such file or folder"
    assert problems[1] == f"{tmp_path / 'empty'}: an empty folder (no files to read)"
    too_large = "; at most 16,777,216 pixels); scale it down"
    assert problems[2].startswith(f"{tmp_path / 'wide.png'}: too large (16777217x1 pixels{too_large}")
    assert problems[3].startswith(f"{tmp_path / 'bomb.png'}: too large (beyond Pillow's limit against")
    # At the limit it is decoded: this one then turns out to hold no pixels.
    assert problems[4].startswith(f"{tmp_path / 'edge.png'}: a damaged image")
    assert isinstance(found[5], Picture) and found[5].name == "good"
