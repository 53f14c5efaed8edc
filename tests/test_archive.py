import stat
import zipfile

import numpy as np
import pytest

from segnet.archive import index_archive, open_archive
from segnet.errors import DatasetError
from segnet.prepare import prepare_dataset
from tests.helpers import course_mat, course_zip, random_panels, write_zip

MAT = course_mat(*random_panels(2, np.random.default_rng(1)))


@pytest.mark.parametrize("folder", ["", "multi-digit-mnist/", "data/multi-digit-mnist/"])
def test_finds_files_in_any_of_the_release_layouts_in_numeric_order(tmp_path, folder):
    names = ["batch00010.mat", "batch00002.mat", "testset003.mat", "testset001.mat"]
    write_zip(tmp_path / "a.zip", {folder + n: MAT for n in names} | {"__MACOSX/._batch00002.mat": b"junk"})
    with open_archive(tmp_path / "a.zip") as archive:
        index = index_archive(archive, "a.zip")
    assert index.train == [folder + "batch00002.mat", folder + "batch00010.mat"]
    assert index.test == [folder + "testset001.mat", folder + "testset003.mat"]


def _symlink_zip(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("batch00001.mat", MAT)
        archive.writestr("testset001.mat", MAT)
        link = zipfile.ZipInfo("multi-digit-mnist/batch00002.mat")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")


@pytest.mark.parametrize(
    "members, problem",
    [
        ({"batch00001.mat": MAT}, "no test files"),
        ({"testset001.mat": MAT}, "no training files"),
        ({"readme.txt": b"hello"}, "no training files"),
        ({"../batch00001.mat": MAT, "testset001.mat": MAT}, "outside the extraction folder"),
        ({"a/../../testset001.mat": MAT, "batch00001.mat": MAT}, "outside the extraction folder"),
        ({"/tmp/batch00001.mat": MAT, "testset001.mat": MAT}, "absolute path"),
        ({"C:/batch00001.mat": MAT, "testset001.mat": MAT}, "absolute path"),
        ({"a/batch00001.mat": MAT, "b/batch00001.mat": MAT, "testset001.mat": MAT}, "appears twice"),
    ],
)
def test_bad_archives_raise_naming_the_archive(tmp_path, members, problem):
    write_zip(tmp_path / "bad.zip", members)
    with open_archive(tmp_path / "bad.zip") as archive, pytest.raises(DatasetError, match=problem) as caught:
        index_archive(archive, str(tmp_path / "bad.zip"))
    assert str(tmp_path / "bad.zip") in str(caught.value)


def test_symbolic_link_entry_is_refused(tmp_path):
    _symlink_zip(tmp_path / "link.zip")
    with open_archive(tmp_path / "link.zip") as archive, pytest.raises(DatasetError, match="symbolic link"):
        index_archive(archive, "link.zip")


def test_missing_archive_and_non_zip_are_reported(tmp_path):
    with pytest.raises(DatasetError, match="archive not found"):
        open_archive(tmp_path / "nowhere.zip")
    (tmp_path / "fake.zip").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="not a zip archive"):
        open_archive(tmp_path / "fake.zip")


def test_a_bad_mat_inside_a_good_archive_names_both(tmp_path):
    write_zip(tmp_path / "a.zip", {"batch00001.mat": MAT, "batch00002.mat": b"garbage" * 50, "testset001.mat": MAT})
    with pytest.raises(DatasetError, match=r"a\.zip:batch00002\.mat: not a readable"):
        prepare_dataset(tmp_path / "a.zip", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_prepare_is_lossless_and_counts_everything(tmp_path):
    contents = course_zip(tmp_path / "c.zip", np.random.default_rng(2), train_files=3, test_files=2, per_file=4)
    before = (tmp_path / "c.zip").read_bytes()
    summary = prepare_dataset(tmp_path / "c.zip", tmp_path / "out")
    assert (tmp_path / "c.zip").read_bytes() == before  # the user's archive is only read
    assert summary["train_files"] == 3 and summary["test_files"] == 2
    assert summary["train_images"] == 12 and summary["test_images"] == 8
    assert summary["train_pixel_dtype"] == "uint8"
    train_images = np.load(tmp_path / "out" / "train_images.npy")
    train_labels = np.load(tmp_path / "out" / "train_labels.npy")
    expected_images = np.concatenate([contents[f"multi-digit-mnist/batch{i:05d}.mat"][0] for i in (1, 2, 3)])
    expected_labels = np.concatenate([contents[f"multi-digit-mnist/batch{i:05d}.mat"][1] for i in (1, 2, 3)])
    # Lossless: the stored bytes reproduce the float32 pixels exactly.
    np.testing.assert_array_equal(train_images.astype(np.float32) / np.float32(255), expected_images)
    np.testing.assert_array_equal(train_labels, expected_labels)
    assert sum(summary["train_class_pixels"]) == 12 * 64 * 64
    assert summary["train_class_pixels"] == np.bincount(expected_labels.ravel(), minlength=11).tolist()


def test_pixels_that_are_not_k_over_255_are_stored_as_float32(tmp_path):
    images, masks = random_panels(2, np.random.default_rng(3))
    images = (images * 0.999).astype(np.float32)
    write_zip(tmp_path / "f.zip", {"batch00001.mat": course_mat(images, masks), "testset001.mat": MAT})
    summary = prepare_dataset(tmp_path / "f.zip", tmp_path / "out")
    assert summary["train_pixel_dtype"] == "float32"
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "train_images.npy"), images)
