"""prepare never leaves partial results: the output folder is the previous one or a complete new one."""

import numpy as np
import pytest

from segnet.errors import DatasetError
from segnet.prepare import prepare_dataset
from tests.helpers import course_mat, course_zip, random_panels, write_zip


def tree(folder) -> dict[str, bytes]:
    """Every file below folder, by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_failing_prepare_leaves_the_earlier_output_byte_identical(tmp_path):
    course_zip(tmp_path / "good.zip", np.random.default_rng(0), train_files=2, test_files=1, per_file=3)
    prepare_dataset(tmp_path / "good.zip", tmp_path / "out")
    before = tree(tmp_path)
    mat = course_mat(*random_panels(2, np.random.default_rng(1)))
    # The last file is broken: everything before it has been read when prepare fails.
    broken = mat[: len(mat) // 2]
    write_zip(tmp_path / "bad.zip", {"batch00001.mat": mat, "batch00002.mat": mat, "testset001.mat": broken})
    with pytest.raises(DatasetError, match=r"bad\.zip:testset001\.mat: "):
        prepare_dataset(tmp_path / "bad.zip", tmp_path / "out")
    assert tree(tmp_path) == before | {"bad.zip": (tmp_path / "bad.zip").read_bytes()}
