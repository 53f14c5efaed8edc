"""`python -m segnet.predict` end to end, in its own process, on real files."""

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segnet.prediction import Picture, read_inputs, segment, summary_line
from tests.helpers import REPO, course_mat, mat_bytes, random_panels, run, stage_env, tree
from tests.prediction.conftest import REGISTERED, panel_bytes, write_image


def predict(*arguments: object, cwd: Path, env: dict[str, str] | None = None):
    command = [sys.executable, "-m", "segnet.predict", *map(str, arguments)]
    return run(command, cwd, check=False, env=env or stage_env(), timeout=300)


@pytest.fixture
def inputs(tmp_path) -> Path:
    """A folder of good pictures (grey PNG, a colour JPEG of dark ink on paper, a .mat of two panels) and bad files."""
    folder = tmp_path / "in"
    panels = panel_bytes(3, seed=11)
    write_image(folder / "a.png", panels[0])
    paper = np.full((100, 150), 255, dtype=np.uint8)
    paper[20:84, 40:104] = 255 - panels[1]
    write_image(folder / "b.jpg", np.stack([paper, paper, paper], axis=-1), quality=95)
    images, masks = random_panels(2, np.random.default_rng(11))
    (folder / "c.mat").write_bytes(course_mat(images, masks))
    (folder / "corrupt.png").write_bytes((folder / "a.png").read_bytes()[:50] + bytes(200))
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not a picture\n")
    (folder / "other.mat").write_bytes(mat_bytes({"weights": np.ones((2, 2))}))
    (tmp_path / "nothing").mkdir()
    return folder


def test_good_pictures_are_written_and_each_bad_input_is_one_line(tmp_path, inputs, model_dir, segmenter):
    out = tmp_path / "out"
    result = predict("--model", model_dir, inputs, tmp_path / "nothing", "--out", out, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    found = read_inputs([inputs / "a.png", inputs / "b.jpg", inputs / "c.mat"])
    pictures = [item for item in found if isinstance(item, Picture)]
    segmentations = [segment(segmenter, picture.grey) for picture in pictures]
    lines = result.stdout.splitlines()
    assert lines == [summary_line(*pair) for pair in zip(pictures, segmentations, strict=True)]
    assert lines[0].startswith(f"{inputs}/a.png: 64x64: found ")
    assert lines[1].startswith(f"{inputs}/b.jpg: 150x100, inverted (dark ink on light): found ")
    assert lines[3].startswith(f"{inputs}/c.mat panel 1 (c-001): 64x64: found ")
    problems = result.stderr.splitlines()
    assert problems == [
        f"ERROR segnet.predict: {inputs}/corrupt.png: a damaged image " + problems[0].split("a damaged image ")[1],
        f"ERROR segnet.predict: {inputs}/empty.png: an empty file (0 bytes)",
        f"ERROR segnet.predict: {inputs}/notes.txt: not a PNG or JPEG image",
        f"ERROR segnet.predict: {inputs}/other.mat: missing the key 'imgMat' (found: ['weights'])",
        f"ERROR segnet.predict: {tmp_path}/nothing: an empty folder (no files to read)",
        "ERROR segnet: 5 file(s) or folder(s) could not be read, 4 picture(s) were segmented (the lines above say why)",
    ]
    names = ["a", "b", "c-000", "c-001"]
    assert sorted(tree(out)) == sorted(f"{name}.{kind}.png" for name in names for kind in ("mask", "overlay"))
    for name, picture, segmentation in zip(names, pictures, segmentations, strict=True):
        with Image.open(out / f"{name}.mask.png") as mask:
            assert mask.mode == "L" and mask.size == picture.grey.shape[::-1]
            assert np.array_equal(np.asarray(mask), segmentation.mask)
        with Image.open(out / f"{name}.overlay.png") as overlay:
            assert overlay.format == "PNG"


def test_existing_outputs_are_refused_before_anything_is_written_and_replaced_with_overwrite(
    tmp_path, inputs, model_dir
):
    out = tmp_path / "out"
    good = [inputs / "a.png", inputs / "b.jpg"]
    assert predict("--model", model_dir, *good, "--out", out, cwd=tmp_path).returncode == 0
    written = tree(out)
    (out / "b.mask.png").write_bytes(b"edited by hand")
    refused = predict("--model", model_dir, inputs / "c.mat", *good, "--out", out, cwd=tmp_path)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.splitlines() == [
        f"ERROR segnet: {out}/a.mask.png, {out}/a.overlay.png, {out}/b.mask.png and 1 more: exist already; "
        "nothing was written (--overwrite replaces them)"
    ]
    assert tree(out) == written | {"b.mask.png": b"edited by hand"}  # c-000 and c-001 not written either
    replaced = predict("--model", model_dir, *good, "--out", out, "--overwrite", cwd=tmp_path)
    assert replaced.returncode == 0, replaced.stderr
    assert tree(out) == written  # the same bytes again: masks and overlays are deterministic


def test_two_pictures_with_one_name_are_refused_and_nothing_is_written(tmp_path, inputs, model_dir):
    copy = write_image(tmp_path / "elsewhere" / "a.png", panel_bytes(1, seed=12)[0])
    refused = predict("--model", model_dir, inputs / "a.png", copy, "--out", tmp_path / "out", cwd=tmp_path)
    assert refused.returncode == 1
    assert refused.stderr.splitlines() == [
        f"ERROR segnet: {inputs}/a.png and {copy} would write the same outputs ({tmp_path}/out/a.mask.png, "
        ".overlay.png); rename them, or predict them in separate runs with different --out folders"
    ]
    assert not (tmp_path / "out").exists()


def test_a_registered_models_alias_writes_the_masks_of_its_folder(tmp_path, inputs, model_dir, mlflow_store):
    pictures = [inputs / "a.png", inputs / "b.jpg"]
    assert predict("--model", model_dir, *pictures, "--out", tmp_path / "folder", cwd=tmp_path).returncode == 0
    env = stage_env() | {"MLFLOW_TRACKING_URI": mlflow_store[0]}
    result = predict(
        "--model", f"models:/{REGISTERED}@champion", *pictures, "--out", tmp_path / "mlflow", cwd=REPO, env=env
    )
    assert result.returncode == 0, result.stderr
    for name in ("a.mask.png", "b.mask.png", "a.overlay.png"):
        assert (tmp_path / "mlflow" / name).read_bytes() == (tmp_path / "folder" / name).read_bytes()
    with Image.open(io.BytesIO((tmp_path / "mlflow" / "b.mask.png").read_bytes())) as mask:
        assert mask.size == (150, 100)
