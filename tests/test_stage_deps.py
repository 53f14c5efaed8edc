"""dvc.yaml lists, for each stage, the project code it runs: every segnet module its script imports, directly or
through other modules, so that editing one reruns the stage. Left out on purpose: modules that only log runs or
report failures, whose edits must not cost a retraining."""

from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, imported_names

# MLflow logging, and turning errors into messages and exit codes: they change no output a stage writes.
NOT_DEPS = {"segnet/tracking.py", "segnet/cli.py", "segnet/errors.py"}
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _imported(path: Path) -> set[str]:
    """The project files `path` imports itself (relative to the repository)."""
    found = set()
    for name in imported_names(path):
        if name.split(".")[0] in ("segnet", "stages"):
            found.add("segnet/__init__.py" if name.startswith("segnet") else "stages/__init__.py")
            file = REPO / (name.replace(".", "/") + ".py")
            if file.is_file():
                found.add(str(file.relative_to(REPO)))
    return found


def code_of(script: str) -> set[str]:
    """`script` and every project file it imports, directly or through others (not through NOT_DEPS: what they
    import serves only them)."""
    seen, todo = set(), [script]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            if name not in NOT_DEPS:
                todo.extend(_imported(REPO / name))
    return seen


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_each_stage_depends_on_the_code_it_runs_and_nothing_else(stage):
    script = STAGES[stage]["cmd"].split()[2].replace(".", "/") + ".py"  # python -m stages.<name> ...
    code = {path for path in STAGES[stage]["deps"] if path.endswith((".py", ".cpp"))}
    expected = code_of(script) - NOT_DEPS - {"stages/__init__.py"}
    # The CPU kernels' C++ source is not imported: it is compiled when training turns the kernels on.
    if "segnet/train.py" in expected:
        expected.add("segnet/cpu_kernels.cpp")
    assert code == expected, f"dvc.yaml {stage}: missing {sorted(expected - code)}, not run {sorted(code - expected)}"


def test_the_import_scan_follows_imports_through_other_modules():
    # stages/train.py imports neither segnet/cores.py nor segnet/cpu_kernels.py itself: it reaches the first through
    # segnet/train.py and segnet/distributed.py, the second through segnet/model.py.
    assert {"segnet/distributed.py", "segnet/cores.py", "segnet/model.py", "segnet/cpu_kernels.py"} <= code_of(
        "stages/train.py")
    assert "segnet/train.py" not in code_of("stages/evaluate.py")
