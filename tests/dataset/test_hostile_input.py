"""The real `prepare` stage against hostile archives, in a project that already holds a good result.

Each case runs `python -m stages.prepare out metrics.json` in its own copy of that project and must
end with exit status 1, one error line naming the archive and the member, no traceback, `out/` and
metrics.json byte-identical, and nothing new anywhere in the project: only the MLflow store changes,
recording the failed run. Each run is a Python process that imports MLflow and torch and opens the
MLflow store (about 4.5 s of CPU), so there is one case per kind of attack and they run two at a time.
"""

import shutil
import stat
import subprocess
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import (
    PREPARE_STAGE,
    course_mat,
    course_zip,
    mat_bytes,
    patch_member,
    random_panels,
    stage_env,
    tree,
    write_params,
    write_zip,
)

MAT = course_mat(*random_panels(2, np.random.default_rng(1)))
GOOD = {"batch00001.mat": MAT, "testset001.mat": MAT}
# The MLflow store: the one thing a refused archive changes (it records the failed run).
STORE = {"mlflow.db", "mlflow.db.lock", "mlartifacts"}


def _archive(folder: Path, members: dict[str, bytes]) -> Path:
    write_zip(folder / "hostile.zip", members)
    return folder / "hostile.zip"


def _symlink(folder: Path) -> Path:
    with zipfile.ZipFile(folder / "hostile.zip", "w") as archive:
        for name, data in GOOD.items():
            archive.writestr(name, data)
        link = zipfile.ZipInfo("batch00002.mat")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    return folder / "hostile.zip"


def _encrypted(folder: Path) -> Path:
    patch_member(_archive(folder, GOOD), "testset001.mat", flag_bits=0x1)
    return folder / "hostile.zip"


def _mat_bomb() -> bytes:
    # 34 MB of zeros in a 34 kB .mat: the member is small, the variable compressed inside it is not.
    return mat_bytes({"imgMat": np.zeros((64, 64, 3, 700), np.float32)}, do_compression=True)


# case: (builds the archive in a folder, the member its error names, data.* params to set). One case per kind
# of attack; test_archive.py runs the variants (drive letters, backslashes, duplicates, the total and member
# limits, lying sizes, bzip2) and test_matfile.py the broken .mat files through the same code at function level.
CASES = {
    "traversal": (lambda f: _archive(f, GOOD | {"../evil.mat": MAT}), "../evil.mat", {}),
    "absolute_path": (lambda f: _archive(f, GOOD | {f"{f}/evil.mat": MAT}), "/evil.mat", {}),
    "symlink": (_symlink, "batch00002.mat", {}),
    "encrypted": (_encrypted, "testset001.mat", {}),
    "zip_bomb": (lambda f: _archive(f, GOOD | {"batch00002.mat": bytes(16 << 20)}), "batch00002.mat", {}),
    "mat_bomb": (
        lambda f: _archive(f, GOOD | {"batch00002.mat": _mat_bomb()}),
        "batch00002.mat",
        {"max_member_bytes": 8 << 20},
    ),
}


def _run(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(PREPARE_STAGE, cwd=folder, env=stage_env(), capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Runs every case; returns the template project, its tree, and per case (folder, tree before, result)."""
    template = tmp_path_factory.mktemp("template")
    course_zip(template / "good.zip", np.random.default_rng(0), train_files=2, test_files=1, per_file=2)
    write_params(template, archive=Path("good.zip"))
    first = _run(template)
    assert first.returncode == 0, first.stderr
    assert (template / "out" / "dataset.json").is_file() and (template / "metrics.json").is_file()

    cases = {}
    for case, (build, _, data) in CASES.items():
        folder = tmp_path_factory.mktemp(case)
        # Without the template's MLflow store: a copied store keeps its artifacts in the template, and a stage
        # refuses to use it (segnet/tracking/runs.py). Each case's failed run opens a fresh one.
        shutil.copytree(template, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*STORE))
        write_params(folder, archive=build(folder), **data)
        cases[case] = (folder, tree(folder))
    template_before = tree(template)
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(cases, pool.map(_run, [folder for folder, _ in cases.values()]), strict=True))
    return template, template_before, {case: (*cases[case], results[case]) for case in cases}


@pytest.mark.parametrize("case", CASES)
def test_the_stage_refuses_a_hostile_archive_cleanly(runs, case):
    template, template_before, outcomes = runs
    folder, before, result = outcomes[case]
    archive = folder / "hostile.zip"
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and errors[0].startswith(f"ERROR segnet: {archive}:"), result.stderr
    assert CASES[case][1] in errors[0]
    after = tree(folder)
    assert (folder / "mlflow.db").is_file()  # the failed run is recorded
    after = {path: data for path, data in after.items() if path not in STORE}
    assert after == before  # nothing else new, nothing removed or changed: no staging folder, no extracted file
    assert not (folder.parent / "evil.mat").exists() and not Path("/evil.mat").exists()
    assert tree(template) == template_before
