"""prepare never leaves partial results: the output folder is the previous one or a complete new one."""

import random
import shutil
import subprocess
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from segnet.data import load_split
from segnet.errors import DatasetError
from segnet.prepare import prepare_dataset
from tests.helpers import PREPARE_STAGE, course_mat, course_zip, random_panels, stage_env, tree, write_params, write_zip


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


def _start_stage(project: Path) -> subprocess.Popen:
    quiet = subprocess.DEVNULL
    return subprocess.Popen(PREPARE_STAGE, cwd=project, env=stage_env(), stdout=quiet, stderr=quiet)


def _run_stage(project: Path) -> None:
    result = subprocess.run(PREPARE_STAGE, cwd=project, env=stage_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


def _wait_for_staging(process: subprocess.Popen, parent: Path) -> None:
    """Returns once the process has begun writing its staging folder (or has ended)."""
    while process.poll() is None and not any(parent.glob(f".out.staging-{process.pid}-*")):
        time.sleep(0.002)


def _write_seconds(output: Path, prepare) -> float:
    """Runs prepare() and returns how long its staging folder beside `output` existed: the write phase."""
    seen = []

    def watch() -> None:
        while not done.is_set():
            seen.append((time.perf_counter(), any(output.parent.glob(f".{output.name}.staging-*"))))
            time.sleep(0.001)

    done = threading.Event()
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        prepare()
    finally:
        done.set()
        watcher.join()
    moments = [moment for moment, staging in seen if staging]
    return moments[-1] - moments[0] if moments else 0.0


def _assert_no_partial_results(project: Path, allowed: list[dict]) -> None:
    """out/ is absent or one of the allowed complete folders; no staging folder passes for a dataset."""
    if (project / "out").exists():
        assert tree(project / "out") in allowed
        for split in ("train", "test"):
            load_split(project / "out", split)
    for staging in project.glob(".out.staging-*"):
        # Unfinished, or (for the instant between the swap and its removal) the replaced complete folder.
        if tree(staging) not in allowed:
            with pytest.raises(DatasetError, match="rerun the prepare stage"):
                load_split(staging, "train")


def test_a_killed_prepare_stage_leaves_the_earlier_output_or_a_complete_new_one(tmp_path):
    rng = random.Random(2026)
    course_zip(tmp_path / "first.zip", np.random.default_rng(0), train_files=2, test_files=1, per_file=2)
    # Big enough for reading and writing to take a while: 21 files of 40 float32 panels, 45 MB of arrays.
    images, masks = random_panels(40, np.random.default_rng(1))
    mat = course_mat(images * np.float32(0.999), masks)
    members = {f"batch{i:05d}.mat": mat for i in range(1, 21)} | {"testset001.mat": mat}
    write_zip(tmp_path / "second.zip", members, compression=zipfile.ZIP_STORED)

    write_params(tmp_path, archive=tmp_path / "first.zip")
    _run_stage(tmp_path)
    first = tree(tmp_path / "out")
    reference = tmp_path / "reference"
    writing = _write_seconds(reference, lambda: prepare_dataset(tmp_path / "second.zip", reference))
    second = tree(reference)
    shutil.rmtree(reference)

    write_params(tmp_path, archive=tmp_path / "second.zip")
    # Killed at a random moment of the run, and twice at a random moment after the staging folder appears.
    for when in ["anytime", "writing", "writing"]:
        process = _start_stage(tmp_path)
        if when == "anytime":
            time.sleep(rng.uniform(0.5, 5.0))
        else:
            _wait_for_staging(process, tmp_path)
            time.sleep(rng.uniform(0.0, 1.5 * writing))
        process.kill()
        process.wait(timeout=60)
        _assert_no_partial_results(tmp_path, allowed=[first, second])

    _run_stage(tmp_path)
    assert tree(tmp_path / "out") == second
    assert not any(tmp_path.glob(".out.staging-*"))  # the killed runs' leftovers are gone
