import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pytest

from segnet.dataset.archive import ArchiveLimits
from segnet.dataset.generate import (
    CELL_OFFSETS,
    GenerateConfig,
    SplitSpec,
    build_archive,
    compose_panel,
    load_mnist_digits,
    make_panels,
    split_digits,
)
from segnet.dataset.matfile import read_panels
from segnet.params import build, load_params, read_seed
from tests.helpers import PARAMS, REPO, settings

MAX_BYTES = settings(ArchiveLimits, "data").max_member_bytes
SMALL = dict(
    train=SplitSpec(files=3, panels_per_file=5, min_digits=0, max_digits=4),
    test=SplitSpec(files=2, panels_per_file=6, min_digits=0, max_digits=9),
    test_digit_fraction=0.2,
)


def test_later_digit_overwrites_image_and_label_where_its_pixel_is_nonzero():
    first = np.zeros((28, 28), np.uint8)
    first[:, :] = 100
    second = np.zeros((28, 28), np.uint8)
    second[0, :] = 200  # only the top row has ink
    image, mask = compose_panel(np.stack([first, second]), np.array([3, 7]), np.array([0, 1]))
    # Cell 1 starts at column 17, overlapping cell 0 (columns 0-27) on columns 17-27.
    assert image[0, 17] == 200 and mask[0, 17] == 7
    assert image[1, 17] == 100 and mask[1, 17] == 3  # no ink in the later digit: the earlier stays
    assert image[0, 44] == 200 and mask[0, 44] == 7  # the last column of cell 1's window
    assert image[0, 45] == 0 and mask[0, 45] == 0
    assert mask[40, 40] == 0 and image[40, 40] == 0


def test_label_is_background_where_the_digit_pixel_is_zero():
    digit = np.zeros((28, 28), np.uint8)
    digit[10, 10] = 1
    image, mask = compose_panel(digit[None], np.array([10]), np.array([8]))
    top = left = CELL_OFFSETS[2]
    assert mask.sum() == 10 and mask[top + 10, left + 10] == 10 and image[top + 10, left + 10] == 1


def test_train_and_test_digits_are_disjoint_and_stratified():
    _, digits = load_mnist_digits()
    train, test = split_digits(digits, 0.2, np.random.default_rng(0))
    assert not set(train) & set(test)
    assert len(train) + len(test) == len(digits) == 5000
    assert np.bincount(digits[test]).tolist() == [100] * 10


@pytest.mark.parametrize("fraction", [0.0001, 0.9999])
def test_a_digit_split_near_zero_or_one_keeps_every_digit_on_both_sides(fraction):
    # 500 images per digit: 0.9999 rounds to all 500 for test, 0.0001 to none; either would leave a split
    # without some digit, and the generator could not draw panels from it.
    _, digits = load_mnist_digits()
    train, test = split_digits(digits, fraction, np.random.default_rng(0))
    assert not set(train) & set(test) and len(train) + len(test) == 5000
    assert set(digits[train]) == set(digits[test]) == set(range(10))


def test_archive_matches_the_course_format(tmp_path):
    summary = build_archive(tmp_path / "a.zip", seed=1, **SMALL)
    assert summary["train_images"] == 15 and summary["test_images"] == 12
    with zipfile.ZipFile(tmp_path / "a.zip") as archive:
        names = archive.namelist()
        assert names == [f"multi-digit-mnist/batch{i:05d}.mat" for i in (1, 2, 3)] + [
            f"multi-digit-mnist/testset{i:03d}.mat" for i in (1, 2)
        ]
        images, masks = read_panels(archive.read(names[0]), names[0], max_bytes=MAX_BYTES)
        test_images, test_masks = read_panels(archive.read(names[3]), names[3], max_bytes=MAX_BYTES)
    assert images.shape == (5, 64, 64, 3)
    # Grey: three equal channels, every value k/255.
    assert np.array_equal(images[..., 0], images[..., 1]) and np.array_equal(images[..., 0], images[..., 2])
    np.testing.assert_array_equal(np.rint(images * 255) / np.float32(255), images)
    # Labels are exactly where there is ink, in both splits (digit classes 1-10: read_panels refuses others).
    np.testing.assert_array_equal(masks > 0, images[..., 0] > 0)
    np.testing.assert_array_equal(test_masks > 0, test_images[..., 0] > 0)
    assert test_masks.any()


def test_same_params_give_a_byte_identical_zip_and_another_seed_does_not(tmp_path):
    def digest(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    build_archive(tmp_path / "a.zip", seed=5, **SMALL)
    build_archive(tmp_path / "b.zip", seed=5, **SMALL)
    build_archive(tmp_path / "c.zip", seed=6, **SMALL)
    assert digest(tmp_path / "a.zip") == digest(tmp_path / "b.zip")
    assert digest(tmp_path / "a.zip") != digest(tmp_path / "c.zip")


def test_the_test_panels_do_not_depend_on_the_training_split_s_settings(tmp_path):
    # A data-size study (`-S generate.train_files=...`) must be scored on the same test panels.
    def members(path: Path) -> dict[str, bytes]:
        with zipfile.ZipFile(path) as archive:
            return {name: archive.read(name) for name in archive.namelist()}

    build_archive(tmp_path / "a.zip", seed=5, **SMALL)
    fewer = dict(SMALL, train=SplitSpec(files=2, panels_per_file=4, min_digits=1, max_digits=3))
    build_archive(tmp_path / "b.zip", seed=5, **fewer)
    a, b = members(tmp_path / "a.zip"), members(tmp_path / "b.zip")
    tests = sorted(name for name in a if "testset" in name)
    assert len(tests) == 2 and all(a[name] == b[name] for name in tests)
    assert a["multi-digit-mnist/batch00001.mat"] != b["multi-digit-mnist/batch00001.mat"]


def test_digit_counts_stay_within_the_split_range_in_distinct_cells():
    # Fully inked digits; each grid cell has a band of pixels no other cell covers, so a cell holds a
    # digit exactly when its band is labelled.
    pixels = np.full((10, 28, 28), 255, np.uint8)
    digits = np.arange(10)
    unique_band = [slice(0, 17), slice(28, 35), slice(45, 63)]
    images, masks = make_panels(200, 2, 5, np.arange(10), pixels, digits, np.random.default_rng(0))
    counts = [sum(m[r, c].all() > 0 for r in unique_band for c in unique_band) for m in masks]
    assert min(counts) == 2 and max(counts) == 5
    assert set(np.unique(masks)) == set(range(11))


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(files=0), r"files and panels_per_file must be >= 1, got 0, 1"),
        (dict(min_digits=5, max_digits=4), r"need 0 <= min_digits <= max_digits <= 9, got 5, 4"),
        (dict(max_digits=10), r"need 0 <= min_digits <= max_digits <= 9, got 0, 10"),
    ],
)
def test_nonsense_split_specs_raise(arguments, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        SplitSpec(**{**dict(files=1, panels_per_file=1, min_digits=0, max_digits=4), **arguments})


@pytest.mark.parametrize(
    "values, message",
    [
        ({"seed": 1.5}, "generate.seed: must be an integer, got 1.5"),
        ({"seed": -1}, "generate.seed: must be an integer >= 0, got -1"),
        ({"train_files": 1.5}, "generate.train_files: must be an integer, got 1.5"),
        ({"test_files": 0}, r"generate.test_\*: files and panels_per_file must be >= 1"),
        ({"train_max_digits": 10}, r"generate.train_\*: need 0 <= min_digits <= max_digits <= 9"),
        ({"test_digit_fraction": 1.0}, r"generate.test_digit_fraction: must be in \(0, 1\), got 1.0"),
        ({"test_fraction": 0.2}, r"generate: unknown key\(s\) \['test_fraction'\]"),
    ],
)
def test_bad_generate_settings_are_refused_by_name(values, message):
    with pytest.raises(ValueError, match=message):
        build(GenerateConfig, "generate", {**PARAMS["generate"], **values})


def test_the_generate_defaults_are_params_yaml_s():
    params = load_params(REPO / "params.yaml")
    assert build(GenerateConfig, "generate", params["generate"]) == settings(GenerateConfig, "generate")


@pytest.mark.parametrize("value", [1.5, -1, True, "0"])
def test_a_training_seed_that_is_not_a_non_negative_integer_is_refused(value):
    with pytest.raises(ValueError, match=f"params.yaml seed: must be an integer >= 0, got {value!r}"):
        read_seed({"seed": value})
    assert read_seed({"seed": 0}) == 0
