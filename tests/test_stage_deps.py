"""dvc.yaml lists, for each stage, the project code it runs: every segnet module its script imports, directly or
through other modules (a sub-package's __init__ counts as imported with it), so that editing one reruns the
stage. Left out on purpose: modules that only log runs or report failures, whose edits must not cost a
retraining. A folder stands for every source file in it."""

from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, imported_names

# MLflow logging (the whole tracking sub-package), and turning errors into messages and exit codes: they change
# no output a stage writes.
NOT_DEPS_FOLDERS = ("segnet/tracking/",)
NOT_DEPS = {"segnet/cli.py", "segnet/errors.py"}
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
SOURCES = (".py", ".cpp")


def not_a_dep(path: str) -> bool:
    return path in NOT_DEPS or path.startswith(NOT_DEPS_FOLDERS)


def _imported(path: Path) -> set[str]:
    """The project files `path` imports itself (relative to the repository), each package's __init__ included."""
    found = set()
    for name in imported_names(path):
        parts = name.split(".")
        if parts[0] not in ("segnet", "stages"):
            continue
        for depth in range(1, len(parts) + 1):
            stem = REPO.joinpath(*parts[:depth])
            for file in (stem / "__init__.py", stem.with_suffix(".py")):
                if file.is_file():
                    found.add(file.relative_to(REPO).as_posix())
    return found


def code_of(script: str) -> set[str]:
    """`script` and every project file it imports, directly or through others (not through NOT_DEPS: what they
    import serves only them)."""
    seen, todo = set(), [script]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            if not not_a_dep(name):
                todo.extend(_imported(REPO / name))
    return seen


def listed_code(stage: str) -> set[str]:
    """The source files dvc.yaml names as `stage`'s deps, folders expanded."""
    files = set()
    for dep in STAGES[stage]["deps"]:
        path = REPO / dep
        if path.is_dir() and dep.startswith(("segnet", "stages")):
            files |= {p.relative_to(REPO).as_posix() for p in path.rglob("*") if p.suffix in SOURCES}
        elif dep.endswith(SOURCES):
            files.add(dep)
    return files


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_each_stage_depends_on_the_code_it_runs_and_nothing_else(stage):
    script = STAGES[stage]["cmd"].split()[2].replace(".", "/") + ".py"  # python -m stages.<name> ...
    expected = {path for path in code_of(script) if not not_a_dep(path)} - {"stages/__init__.py"}
    # The CPU kernels' C++ source is not imported: it is compiled when training turns the kernels on.
    if "segnet/speed/cpu_kernels.py" in expected:
        expected.add("segnet/speed/cpu_kernels.cpp")
    code = listed_code(stage)
    assert code == expected, f"dvc.yaml {stage}: missing {sorted(expected - code)}, not run {sorted(code - expected)}"


def test_the_import_scan_follows_imports_through_other_modules_and_packages():
    # stages/train.py imports neither segnet/cores.py nor segnet/speed/cpu_kernels.py itself: it reaches the first
    # through segnet/training/distributed.py, the second through segnet/speed/__init__.py.
    train = code_of("stages/train.py")
    assert {
        "segnet/training/distributed.py",
        "segnet/cores.py",
        "segnet/speed/__init__.py",
        "segnet/speed/cpu_kernels.py",
    } <= train


def test_only_training_reaches_the_speed_code():
    for stage in sorted(STAGES):
        script = STAGES[stage]["cmd"].split()[2].replace(".", "/") + ".py"
        reaches = any(path.startswith("segnet/speed/") for path in code_of(script))
        assert reaches == (stage == "train"), stage
    for path in (REPO / "segnet").rglob("*.py"):
        name = path.relative_to(REPO).as_posix()
        if not name.startswith(("segnet/speed/", "segnet/training/")):
            assert not any(n.startswith("segnet.speed") for n in imported_names(path)), name


def test_the_model_imports_only_torch_and_the_standard_library():
    names = imported_names(REPO / "segnet/model/network.py")
    assert {name.split(".")[0] for name in names} <= {"torch", "dataclasses", "math", "typing", "collections"}
