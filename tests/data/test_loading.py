import json

import numpy as np
import pytest

from segnet.data.loading import load_split
from segnet.dataset.archive import ArchiveLimits
from segnet.dataset.prepare import prepare_dataset
from segnet.errors import DatasetError
from tests.helpers import course_zip, settings

LIMITS = settings(ArchiveLimits, "data")


@pytest.fixture
def prepared(tmp_path):
    course_zip(tmp_path / "a.zip", np.random.default_rng(0), train_files=2, test_files=1, per_file=3)
    prepare_dataset(tmp_path / "a.zip", tmp_path / "prepared", limits=LIMITS)
    return tmp_path / "prepared"


def test_loads_a_prepared_split(prepared):
    images, labels = load_split(prepared, "train")
    assert tuple(images.shape) == (6, 64, 64, 3) and tuple(labels.shape) == (6, 64, 64)


def test_a_folder_without_dataset_json_is_refused_as_unfinished(prepared):
    (prepared / "dataset.json").unlink()
    with pytest.raises(DatasetError, match=f"^{prepared}: no dataset.json, .* rerun the prepare stage"):
        load_split(prepared, "test")


def test_arrays_that_disagree_with_dataset_json_are_refused(prepared):
    summary = json.loads((prepared / "dataset.json").read_text())
    (prepared / "dataset.json").write_text(json.dumps(summary | {"train_images": 7}))
    with pytest.raises(DatasetError, match="dataset.json counts 7 train panels but train_images.npy holds 6"):
        load_split(prepared, "train")
    (prepared / "dataset.json").write_text("{")
    with pytest.raises(DatasetError, match="dataset.json: unreadable"):
        load_split(prepared, "train")


@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.parametrize("damage", ["truncated", "not_npy"])
def test_a_damaged_array_file_is_refused_by_name(prepared, mmap, damage):
    path = prepared / "train_labels.npy"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not an array" * 20)
    with pytest.raises(DatasetError, match=f"^{path}: unreadable .*rerun the prepare stage"):
        load_split(prepared, "train", mmap=mmap)
