import io

import numpy as np
import pytest
from PIL import Image

from segnet.prediction import Picture, Segmentation, check_outputs, mask_png, output_paths, overlay_png, summary_line
from segnet.prediction.outputs import MIN_DIGIT_PIXELS

GREY = np.zeros((3, 5), dtype=np.float32)


def test_the_mask_is_an_8_bit_grey_png_of_the_class_indices_at_the_pictures_size():
    mask = (np.arange(30 * 50) % 11).astype(np.uint8).reshape(30, 50)
    with Image.open(io.BytesIO(mask_png(mask))) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "L", (50, 30))
        assert np.array_equal(np.asarray(image), mask)


def test_the_summary_names_the_size_the_inversion_and_each_digit_found_with_its_pixels():
    mask = np.zeros((30, 50), dtype=np.uint8)
    mask[0, :40] = 10  # the digit 0
    mask[2, :MIN_DIGIT_PIXELS] = 3
    mask[4, : MIN_DIGIT_PIXELS - 1] = 4  # too few pixels for a digit
    picture = Picture("a", "scans/a.png", GREY)
    assert summary_line(picture, Segmentation(mask, False)) == (
        f"scans/a.png: 50x30: found 0 (40 px), 3 ({MIN_DIGIT_PIXELS} px); stray pixels: 4 ({MIN_DIGIT_PIXELS - 1} px)"
    )
    assert summary_line(picture, Segmentation(mask * (mask == 4), True)) == (
        f"scans/a.png: 50x30, inverted (dark ink on light): no digits; stray pixels: 4 ({MIN_DIGIT_PIXELS - 1} px)"
    )
    assert summary_line(picture, Segmentation(mask * 0, False)) == "scans/a.png: 50x30: no digits"


def pictures(*names: str) -> list[Picture]:
    return [Picture(name, f"in/{index}/{name}.png", GREY) for index, name in enumerate(names)]


def test_outputs_that_exist_are_refused_in_one_line_unless_overwrite_is_given(tmp_path):
    check_outputs(tmp_path / "new", pictures("a", "b"), overwrite=False)  # a folder not there yet is made
    mask, overlay = output_paths(tmp_path, "b")
    assert (mask.name, overlay.name) == ("b.mask.png", "b.overlay.png")
    overlay.write_bytes(b"earlier")
    with pytest.raises(ValueError) as refused:
        check_outputs(tmp_path, pictures("a", "b"), overwrite=False)
    assert str(refused.value) == f"{overlay}: exists already; nothing was written (--overwrite replaces them)"
    check_outputs(tmp_path, pictures("a", "b"), overwrite=True)
    for name in "cdef":
        output_paths(tmp_path, name)[0].write_bytes(b"earlier")
    with pytest.raises(ValueError, match=r"b\.overlay\.png, .*c\.mask\.png, .*d\.mask\.png and 2 more: exist already"):
        check_outputs(tmp_path, pictures(*"bcdef"), overwrite=False)


def test_shared_outputs_and_outputs_in_place_of_a_folder_are_refused_even_with_overwrite(tmp_path):
    with pytest.raises(ValueError) as refused:
        check_outputs(tmp_path, pictures("a", "b", "a"), overwrite=True)
    assert str(refused.value).startswith(f"in/0/a.png and in/2/a.png would write the same outputs ({tmp_path}/a.")
    assert "\n" not in str(refused.value)
    output_paths(tmp_path, "a")[1].mkdir()
    with pytest.raises(ValueError, match="a.overlay.png: a folder, where an output file goes"):
        check_outputs(tmp_path, pictures("a"), overwrite=True)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="file: a file, where the output folder goes"):
        check_outputs(tmp_path / "file", pictures("a"), overwrite=True)


def test_the_overlay_is_a_png_with_the_same_bytes_for_the_same_picture():
    grey = np.linspace(0, 1, 40 * 60, dtype=np.float32).reshape(40, 60)
    mask = (np.arange(40 * 60) // 200 % 11).astype(np.uint8).reshape(40, 60)
    drawn = overlay_png(grey, mask, "a.png")
    assert drawn == overlay_png(grey, mask, "a.png")
    assert drawn != overlay_png(grey, np.roll(mask, 1), "a.png")
    with Image.open(io.BytesIO(drawn)) as image:
        assert image.format == "PNG" and image.size == (550, 390)  # 4 x 2.7 in picture, 1.5 in legend, at 100 dpi
        colours = {tuple(pixel) for pixel in np.asarray(image.convert("RGB")).reshape(-1, 3)[::7]}
    assert len(colours) > 20
