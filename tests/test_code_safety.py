"""The project's own code never unpickles: every loader it calls is restricted to plain data."""

import ast
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO, imported_names

# The project's files, committed or not, but not what git ignores: a benchmark's clone of the repository in
# benchmarks/results/ is not the project's code.
_LISTED = subprocess.run(
    ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", "segnet", "stages", "benchmarks", "tests"],
    cwd=REPO,
    capture_output=True,
    text=True,
    check=True,
).stdout.splitlines()
SOURCES = sorted(REPO / name for name in _LISTED if name.endswith(".py") and (REPO / name).is_file())


def _calls(path: Path, module: str, function: str) -> list[ast.Call]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == function
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == module
        ):
            found.append(node)
    return found


def _keyword(call: ast.Call, name: str):
    return next((k.value.value for k in call.keywords if k.arg == name and isinstance(k.value, ast.Constant)), None)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_loaders_refuse_pickles(path):
    for call in _calls(path, "torch", "load"):
        assert _keyword(call, "weights_only") is True, f"{path}:{call.lineno}: torch.load without weights_only=True"
    for call in _calls(path, "np", "load"):
        assert _keyword(call, "allow_pickle") is not True, f"{path}:{call.lineno}: np.load with allow_pickle=True"
    imported = _imported(path)
    assert not imported & {"pickle", "cloudpickle", "dill", "joblib"}, path
    # Imported by name, the loaders would escape the torch.load / np.load scan above.
    assert not imported & {"torch.load", "numpy.load"}, path


def _imported(path: Path) -> set[str]:
    """Top-level modules imported (`import pickle`, `from pickle import loads`), and `module.name` for each name
    imported from a module (`from torch import load` -> torch.load)."""
    names = imported_names(path)
    return {name.split(".")[0] for name in names} | names


def test_the_scan_sees_the_loaders_it_checks():
    # Guards the test itself: if the call pattern or the file list changed, the scan above would pass vacuously.
    assert {REPO / "segnet" / "training" / "checkpoint.py", REPO / "tests" / "test_code_safety.py"} <= set(SOURCES)
    assert _calls(REPO / "segnet" / "training" / "checkpoint.py", "torch", "load")
    assert _calls(REPO / "segnet" / "model" / "storage.py", "torch", "load")
    assert _calls(REPO / "segnet" / "data" / "loading.py", "np", "load")
    assert {"torch", "contextlib", "contextlib.contextmanager"} <= _imported(
        REPO / "segnet" / "speed" / "cpu_kernels.py"
    )
