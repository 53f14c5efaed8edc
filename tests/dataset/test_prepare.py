"""prepare never leaves partial results: the output folder is the previous one or a complete new one."""

import random
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from segnet.data.loading import load_split
from segnet.dataset.archive import ArchiveLimits
from segnet.dataset.prepare import prepare_dataset
from segnet.errors import DatasetError
from segnet.params import load_params
from tests.helpers import (
    PREPARE_STAGE,
    course_mat,
    course_zip,
    main_in_process,
    random_panels,
    run,
    settings,
    stage_env,
    tree,
    write_params,
    write_zip,
)

LIMITS = settings(ArchiveLimits, "data")


def _mixed_archive(path: Path) -> list[np.ndarray]:
    """Six training files, the fourth with pixels that are not k/255; returns every training panel in order."""
    rng = np.random.default_rng(5)
    panels, members = [], {}
    for number in range(1, 7):
        images, masks = random_panels(3, rng)
        if number == 4:
            images = (images * np.float32(0.999)).astype(np.float32)
        panels.append(images)
        members[f"batch{number:05d}.mat"] = course_mat(images, masks)
    members["testset001.mat"] = course_mat(*random_panels(2, rng))
    write_zip(path, members)
    return panels


def test_parsing_threads_write_exactly_what_one_thread_writes(tmp_path, caplog):
    panels = _mixed_archive(tmp_path / "mixed.zip")
    one = prepare_dataset(tmp_path / "mixed.zip", tmp_path / "one", workers=1, limits=LIMITS)
    two = prepare_dataset(tmp_path / "mixed.zip", tmp_path / "two", workers=2, limits=LIMITS)
    # Each run warns once, naming the file that turned the split to float32.
    warnings = [record.getMessage() for record in caplog.records if "1/255" in record.getMessage()]
    assert (
        warnings
        == [
            f"{tmp_path / 'mixed.zip'}:batch00004.mat: pixels are not all multiples of 1/255; "
            "storing the train split as float32"
        ]
        * 2
    )
    assert one == two and tree(tmp_path / "one") == tree(tmp_path / "two")
    # The fourth file turned the split to float32 after three files had been stored as uint8: those were
    # converted on disk, exactly.
    assert one["train_pixel_dtype"] == "float32" and one["test_pixel_dtype"] == "uint8"
    images = np.load(tmp_path / "two" / "train_images.npy", mmap_mode="r")
    np.testing.assert_array_equal(images, np.concatenate(panels))
    assert not list((tmp_path / "two").glob("*.uint8.npy"))


def test_a_bad_file_read_by_a_parsing_thread_is_named_and_the_earlier_output_is_kept(tmp_path):
    course_zip(tmp_path / "good.zip", np.random.default_rng(0), train_files=2, test_files=1, per_file=3)
    prepare_dataset(tmp_path / "good.zip", tmp_path / "out", workers=2, limits=LIMITS)
    before = tree(tmp_path / "out")
    mat = course_mat(*random_panels(2, np.random.default_rng(1)))
    members = {f"batch{i:05d}.mat": mat for i in range(1, 6)} | {
        "batch00003.mat": b"garbage" * 50,
        "testset001.mat": mat,
    }
    write_zip(tmp_path / "bad.zip", members)
    with pytest.raises(DatasetError, match=r"bad\.zip:batch00003\.mat: not a readable"):
        prepare_dataset(tmp_path / "bad.zip", tmp_path / "out", workers=2, limits=LIMITS)
    assert tree(tmp_path / "out") == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bad.zip", "good.zip", "out"]


def test_a_failing_prepare_leaves_the_earlier_output_byte_identical(tmp_path):
    course_zip(tmp_path / "good.zip", np.random.default_rng(0), train_files=2, test_files=1, per_file=3)
    prepare_dataset(tmp_path / "good.zip", tmp_path / "out", limits=LIMITS)
    before = tree(tmp_path)
    mat = course_mat(*random_panels(2, np.random.default_rng(1)))
    # The last file is broken: everything before it has been read when prepare fails.
    broken = mat[: len(mat) // 2]
    write_zip(tmp_path / "bad.zip", {"batch00001.mat": mat, "batch00002.mat": mat, "testset001.mat": broken})
    with pytest.raises(DatasetError, match=r"bad\.zip:testset001\.mat: "):
        prepare_dataset(tmp_path / "bad.zip", tmp_path / "out", limits=LIMITS)
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
    seen: list[tuple[float, bool]] = []

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
    writing = _write_seconds(reference, lambda: prepare_dataset(tmp_path / "second.zip", reference, limits=LIMITS))
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


# The two keys the stage checks itself; the zip limits go through params.build (its checks: test_generate.py).
@pytest.mark.parametrize(
    "data, message",
    [
        ({"archive": 123}, "params.yaml data.archive: must be the path of a zip file, got 123"),
        ({"workers": -1}, "params.yaml data.workers: must be an integer >= 0, got -1"),
        ({"workers": True}, "params.yaml data.workers: must be an integer >= 0, got True"),
    ],
)
def test_bad_data_settings_stop_the_stage_with_one_line_naming_the_key(tmp_path, data, message):
    write_params(tmp_path, archive=tmp_path / "unused.zip")
    params = load_params(tmp_path / "params.yaml")
    params["data"].update(data)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = main_in_process("stages.prepare", tmp_path, *PREPARE_STAGE[3:])
    assert result.returncode == 1 and result.stderr.startswith(f"ERROR segnet: {message}")
    assert not (tmp_path / "out").exists() and not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize(
    "output, message",
    [
        ("own", "own/archive.zip: the archive is at or below the output folder own, which prepare replaces as a whole"),
        ("own/archive.zip", "own/archive.zip: the archive is at or below the output folder own/archive.zip"),
        ("own/notes.txt", "own/notes.txt: is a file, where an output folder goes; refusing to replace it"),
    ],
)
def test_an_output_path_that_holds_the_users_own_files_is_refused_and_kept(tmp_path, output, message):
    # By hand, `python -m stages.prepare FOLDER ...` with the folder the user keeps the zip in, the zip itself
    # or another file of theirs: replacing it would delete what is there.
    own = tmp_path / "own"
    own.mkdir()
    course_zip(own / "archive.zip", np.random.default_rng(4), train_files=1, test_files=1, per_file=2)
    (own / "notes.txt").write_text("mine")
    write_params(tmp_path, archive="own/archive.zip")
    before = tree(own)
    result = main_in_process("stages.prepare", tmp_path, output, "metrics.json")
    assert result.returncode == 1 and result.stderr.startswith(f"ERROR segnet: {message}")
    assert tree(own) == before and not (tmp_path / "metrics.json").exists()


def test_an_output_folder_of_other_files_is_refused_and_an_earlier_output_replaced(tmp_path):
    course_zip(tmp_path / "archive.zip", np.random.default_rng(4), train_files=1, test_files=1, per_file=2)
    write_params(tmp_path, archive=tmp_path / "archive.zip")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "results.csv").write_text("mine")
    result = run(PREPARE_STAGE, tmp_path, check=False, env=stage_env(), timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "ERROR segnet: out: holds results.csv, which this stage does not write; refusing to replace the folder "
        "and delete them: name a new or an empty folder"
    )
    assert tree(tmp_path / "out") == {"results.csv": b"mine"}
    (tmp_path / "out" / "results.csv").unlink()
    _run_stage(tmp_path)  # an empty folder is taken, and the stage's own output replaced the next time
    _run_stage(tmp_path)
    assert (tmp_path / "out" / "dataset.json").is_file()


@pytest.mark.parametrize(
    "model, checkpoints, message",
    [
        ("own", "checkpoints", "own: holds weights.pt, which this stage does not write"),
        # Training would make the model folder to hold its checkpoints, and then refuse to replace it at the end.
        ("model", "model/checkpoints", "model/checkpoints: inside the model folder model, which holds only the model"),
    ],
)
def test_the_train_stage_refuses_a_model_folder_it_cannot_replace_before_it_trains(
    tmp_path, model, checkpoints, message
):
    course_zip(tmp_path / "archive.zip", np.random.default_rng(4), train_files=1, test_files=1, per_file=2)
    write_params(tmp_path, archive=tmp_path / "archive.zip")
    prepare_dataset(tmp_path / "archive.zip", tmp_path / "prepared", limits=LIMITS)
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "weights.pt").write_bytes(b"mine")
    stage = [sys.executable, "-m", "stages.train", "prepared", model, "train.json", "history.csv", checkpoints]
    store = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}"}
    result = run(stage, tmp_path, check=False, env=stage_env() | store, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"ERROR segnet: {message}")
    assert tree(tmp_path / "own") == {"weights.pt": b"mine"} and not (tmp_path / "model").exists()
    # Refused before anything started: no training, no MLflow run, no metrics.
    assert "epoch" not in result.stderr and not (tmp_path / "m.db").exists() and not (tmp_path / "train.json").exists()
