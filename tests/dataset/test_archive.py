import io
import stat
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest

from segnet.dataset.archive import ArchiveLimits, index_archive, open_archive, read_member
from segnet.dataset.generate import load_mnist_digits, make_panels
from segnet.dataset.prepare import prepare_dataset
from segnet.errors import DatasetError
from tests.helpers import course_mat, course_zip, patch_member, random_panels, settings, write_zip

MAT = course_mat(*random_panels(2, np.random.default_rng(1)))
LIMITS = settings(ArchiveLimits, "data")


@pytest.mark.parametrize("folder", ["", "multi-digit-mnist/", "data/multi-digit-mnist/"])
def test_finds_files_in_any_of_the_release_layouts_in_numeric_order(tmp_path, folder):
    names = ["batch00010.mat", "batch00002.mat", "testset003.mat", "testset001.mat"]
    write_zip(tmp_path / "a.zip", {folder + n: MAT for n in names} | {"__MACOSX/._batch00002.mat": b"junk"})
    with open_archive(tmp_path / "a.zip") as archive:
        index = index_archive(archive, "a.zip", limits=LIMITS)
    assert index.train == [folder + "batch00002.mat", folder + "batch00010.mat"]
    assert index.test == [folder + "testset001.mat", folder + "testset003.mat"]


def test_windows_separators_and_any_case_are_read(tmp_path):
    # As written by Windows tools (PowerShell 5.1's Compress-Archive: backslashes) and case-insensitive systems.
    names = ["multi-digit-mnist\\Batch00002.mat", "multi-digit-mnist\\batch00001.MAT", "TestSet001.mat"]
    write_zip(tmp_path / "a.zip", dict.fromkeys(names, MAT) | {"__MACOSX\\._batch00003.mat": b"junk"})
    with open_archive(tmp_path / "a.zip") as archive:
        index = index_archive(archive, "a.zip", limits=LIMITS)
    assert index.train == ["multi-digit-mnist\\batch00001.MAT", "multi-digit-mnist\\Batch00002.mat"]
    assert index.test == ["TestSet001.mat"] and index.ignored == []


def test_an_archive_without_training_files_lists_what_it_holds_instead(tmp_path):
    members = {f"train_{index}.mat": MAT for index in range(7)} | {"testset001.mat": MAT}
    write_zip(tmp_path / "a.zip", members)
    with open_archive(tmp_path / "a.zip") as archive, pytest.raises(DatasetError) as caught:
        index_archive(archive, "a.zip", limits=LIMITS)
    assert str(caught.value) == (
        "a.zip: no training files (batch*.mat) in the archive; 7 of its files are neither batch*.mat nor "
        "testset*.mat: 'train_0.mat', 'train_1.mat', 'train_2.mat', 'train_3.mat', 'train_4.mat' and 2 more"
    )


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
        ({"C:\\batch00001.mat": MAT, "testset001.mat": MAT}, "absolute path"),
        ({"\\\\server\\share\\batch00001.mat": MAT, "testset001.mat": MAT}, "absolute path"),
        ({"..\\batch00001.mat": MAT, "testset001.mat": MAT}, "outside the extraction folder"),
        ({"a\\..\\..\\testset001.mat": MAT, "batch00001.mat": MAT}, "outside the extraction folder"),
        ({"a/batch00001.mat": MAT, "b/batch00001.mat": MAT, "testset001.mat": MAT}, "appears twice"),
        ({"a/batch00001.mat": MAT, "b/BATCH00001.mat": MAT, "testset001.mat": MAT}, "appears twice"),
    ],
)
def test_bad_archives_raise_naming_the_archive(tmp_path, members, problem):
    write_zip(tmp_path / "bad.zip", members)
    with open_archive(tmp_path / "bad.zip") as archive, pytest.raises(DatasetError, match=problem) as caught:
        index_archive(archive, str(tmp_path / "bad.zip"), limits=LIMITS)
    assert str(tmp_path / "bad.zip") in str(caught.value)


def test_symbolic_link_entry_is_refused(tmp_path):
    _symlink_zip(tmp_path / "link.zip")
    with open_archive(tmp_path / "link.zip") as archive, pytest.raises(DatasetError, match="symbolic link"):
        index_archive(archive, "link.zip", limits=LIMITS)


def test_a_member_without_a_file_name_is_refused(tmp_path):
    # Found by fuzzing: an empty name broke zipfile's own ZipInfo.is_dir(); zipfile cannot write one, but "."
    # takes the same path (no path parts at all).
    write_zip(tmp_path / "noname.zip", {"batch00001.mat": MAT, "testset001.mat": MAT, ".": MAT})
    with open_archive(tmp_path / "noname.zip") as archive, pytest.raises(DatasetError, match="without a file name"):
        index_archive(archive, "noname.zip", limits=LIMITS)


@pytest.mark.parametrize(
    "original, damaged",
    [
        (b"batch\xc3\xbf.mat", b"batch\xff\xff.mat"),  # flagged UTF-8, but not UTF-8: UnicodeDecodeError
        (b"PK\x01\x02\x14\x03\x14", b"PK\x01\x02\x14\x03\x54"),  # needs zip version 8.4: NotImplementedError
    ],
)
def test_a_damaged_central_directory_is_reported_as_such(tmp_path, original, damaged):
    # Found by fuzzing: zipfile raises more than BadZipFile for these.
    write_zip(tmp_path / "a.zip", {"batch00001.mat": MAT, "testset001.mat": MAT, "batch\xff.mat": MAT})
    data = (tmp_path / "a.zip").read_bytes()
    assert original in data
    (tmp_path / "a.zip").write_bytes(data.replace(original, damaged))
    with pytest.raises(DatasetError, match=f"^{tmp_path / 'a.zip'}: not a zip archive, or a damaged one"):
        open_archive(tmp_path / "a.zip")


def test_encrypted_entry_is_refused(tmp_path):
    write_zip(tmp_path / "locked.zip", {"batch00001.mat": MAT, "testset001.mat": MAT})
    # zipfile cannot write encrypted members; the flag bit in both headers is what readers go by.
    patch_member(tmp_path / "locked.zip", "testset001.mat", flag_bits=0x1)
    with open_archive(tmp_path / "locked.zip") as archive, pytest.raises(DatasetError) as caught:
        index_archive(archive, "locked.zip", limits=LIMITS)
    assert str(caught.value).startswith("locked.zip:testset001.mat: encrypted entry")


@pytest.mark.parametrize(
    "bad",
    [
        dict(max_total_bytes=0),
        dict(max_member_bytes=-1),
        dict(max_member_bytes=1.5),
        dict(max_total_bytes=True),
        dict(max_compression_ratio=0.5),
        dict(max_compression_ratio=float("nan")),
        dict(max_compression_ratio="100"),
    ],
)
def test_nonsense_limits_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        settings(ArchiveLimits, "data", **bad)


@pytest.mark.parametrize(
    "limits, problem",
    [
        (
            settings(ArchiveLimits, "data", max_member_bytes=len(MAT) - 1),
            f"declares {len(MAT):,} bytes .* data.max_member_bytes",
        ),
        (
            settings(ArchiveLimits, "data", max_total_bytes=2 * len(MAT) - 1),
            "up to this one declare .* more than data.max_total_bytes",
        ),
        (settings(ArchiveLimits, "data", max_compression_ratio=1), "more than data.max_compression_ratio=1;"),
    ],
)
def test_an_archive_beyond_a_limit_is_refused_naming_the_member(tmp_path, limits, problem):
    write_zip(tmp_path / "big.zip", {"batch00001.mat": MAT, "testset001.mat": MAT})
    with pytest.raises(DatasetError, match=problem) as caught:
        prepare_dataset(tmp_path / "big.zip", tmp_path / "out", limits=limits)
    assert str(caught.value).startswith(f"{tmp_path / 'big.zip'}:")
    assert "batch00001.mat" in str(caught.value) or "testset001.mat" in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_a_zip_bomb_is_refused_without_inflating_it(tmp_path):
    bomb = bytes(32 << 20)  # 32 MiB of zeros deflate about 1,000:1
    write_zip(tmp_path / "bomb.zip", {"batch00001.mat": MAT, "batch00002.mat": bomb, "testset001.mat": MAT})
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError, match=r"bomb\.zip:batch00002\.mat: inflates 1,0\d\d times"):
            prepare_dataset(tmp_path / "bomb.zip", tmp_path / "out", limits=LIMITS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20  # the archive is hashed in 1 MiB chunks; the bomb is never inflated


@pytest.mark.parametrize("method, name", [(zipfile.ZIP_BZIP2, "bzip2"), (zipfile.ZIP_LZMA, "LZMA")])
def test_members_compressed_without_a_size_bound_are_refused(tmp_path, method, name):
    with zipfile.ZipFile(tmp_path / "other.zip", "w", method) as archive:
        archive.writestr("batch00001.mat", MAT)
        archive.writestr("testset001.mat", MAT)
    with pytest.raises(DatasetError, match=f"other.zip:batch00001.mat: compressed with {name}.*re-create the zip"):
        prepare_dataset(tmp_path / "other.zip", tmp_path / "out", limits=LIMITS)


@pytest.mark.parametrize("fix_crc", [True, False])
def test_a_member_that_holds_more_than_it_declares_yields_no_more(tmp_path, fix_crc):
    write_zip(tmp_path / "lie.zip", {"batch00001.mat": MAT, "testset001.mat": MAT})
    declared = len(MAT) // 2
    crc = zlib.crc32(MAT[:declared]) if fix_crc else None
    patch_member(tmp_path / "lie.zip", "batch00001.mat", file_size=declared, crc=crc)
    with open_archive(tmp_path / "lie.zip") as archive:
        if fix_crc:
            assert read_member(archive, "batch00001.mat", "lie.zip", limits=LIMITS) == MAT[:declared]
        else:
            with pytest.raises(DatasetError, match="lie.zip:batch00001.mat: cannot be read from the archive"):
                read_member(archive, "batch00001.mat", "lie.zip", limits=LIMITS)
    with pytest.raises(DatasetError, match=r"lie\.zip:batch00001\.mat: "):
        prepare_dataset(tmp_path / "lie.zip", tmp_path / "out", limits=LIMITS)


def test_default_limits_accept_a_full_size_course_file():
    # The course release: 1,000 files of 500 panels with 0-4 real digits, stored uncompressed in the .mat.
    pixels, digits = load_mnist_digits()
    rng = np.random.default_rng(0)
    grey, masks = make_panels(500, 0, 4, np.arange(len(digits)), pixels, digits, rng)
    mat = course_mat(np.repeat(grey[..., None], 3, axis=-1).astype(np.float32) / np.float32(255), masks)
    archive_bytes = io.BytesIO()
    write_zip(archive_bytes, {"batch00001.mat": mat, "testset001.mat": MAT})
    with zipfile.ZipFile(archive_bytes) as archive:
        info = archive.getinfo("batch00001.mat")
        index_archive(archive, "course.zip", limits=LIMITS)
    assert 1000 * info.file_size < LIMITS.max_total_bytes
    assert info.file_size / info.compress_size < LIMITS.max_compression_ratio / 4


def test_missing_archive_and_non_zip_are_reported(tmp_path):
    with pytest.raises(DatasetError, match="archive not found"):
        open_archive(tmp_path / "nowhere.zip")
    (tmp_path / "fake.zip").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="not a zip archive"):
        open_archive(tmp_path / "fake.zip")


def test_a_bad_mat_inside_a_good_archive_names_both(tmp_path):
    write_zip(tmp_path / "a.zip", {"batch00001.mat": MAT, "batch00002.mat": b"garbage" * 50, "testset001.mat": MAT})
    with pytest.raises(DatasetError, match=r"a\.zip:batch00002\.mat: not a readable"):
        prepare_dataset(tmp_path / "a.zip", tmp_path / "out", limits=LIMITS)
    assert not (tmp_path / "out").exists()


def test_splits_of_two_panel_sizes_are_refused_naming_a_file_of_each(tmp_path):
    images, masks = random_panels(2, np.random.default_rng(2))
    small = course_mat(images[:, ::2, ::2], masks[:, ::2, ::2])
    write_zip(tmp_path / "a.zip", {"batch00001.mat": MAT, "batch00002.mat": MAT, "d/testset001.mat": small})
    with pytest.raises(DatasetError) as caught:
        prepare_dataset(tmp_path / "a.zip", tmp_path / "out", limits=LIMITS)
    assert str(caught.value) == (
        f"{tmp_path / 'a.zip'}:d/testset001.mat: test panels are (32, 32), but training panels (batch00001.mat "
        "and the rest) are (64, 64); both must have one size"
    )
    assert not (tmp_path / "out").exists()


def test_prepare_is_lossless_and_counts_everything(tmp_path):
    contents = course_zip(tmp_path / "c.zip", np.random.default_rng(2), train_files=3, test_files=2, per_file=4)
    before = (tmp_path / "c.zip").read_bytes()
    summary = prepare_dataset(tmp_path / "c.zip", tmp_path / "out", limits=LIMITS)
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


def test_pixels_that_are_not_k_over_255_are_stored_as_float32(tmp_path, caplog):
    images, masks = random_panels(2, np.random.default_rng(3))
    images = (images * 0.999).astype(np.float32)
    write_zip(tmp_path / "f.zip", {"batch00001.mat": course_mat(images, masks), "testset001.mat": MAT})
    summary = prepare_dataset(tmp_path / "f.zip", tmp_path / "out", limits=LIMITS)
    # The warning names the file inside the archive, so that a user can find the odd one among a thousand.
    assert (
        "f.zip:batch00001.mat: pixels are not all multiples of 1/255; storing the train split as float32" in caplog.text
    )
    assert summary["train_pixel_dtype"] == "float32"
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "train_images.npy"), images)
