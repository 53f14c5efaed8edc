"""Shared test material: small real datasets zipped like the course release, and a tiny copy of the project."""

import ast
import contextlib
import dataclasses
import fcntl
import importlib
import io
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from unittest import mock

import numpy as np
import pytest
import scipy.io
import torch
import yaml

from segnet import NUM_CLASSES
from segnet.data import AugmentConfig
from segnet.dataset.generate import compose_panel
from segnet.model import SegNetConfig
from segnet.params import load_params
from segnet.training import RuntimeConfig, TrainConfig

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# The prepare stage of this checkout, run in a project folder (cwd) that holds its params.yaml.
PREPARE_STAGE = [sys.executable, "-m", "stages.prepare", "out", "metrics.json"]


def random_panels(count: int, rng: np.random.Generator, max_digits: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Panels built with the generator's rule from random blob "digits": float32 (N, 64, 64, 3), uint8 labels."""
    images = np.zeros((count, 64, 64, 3), dtype=np.float32)
    masks = np.zeros((count, 64, 64), dtype=np.uint8)
    for index in range(count):
        k = int(rng.integers(0, max_digits + 1))
        digits = (rng.random((k, 28, 28)) > 0.6) * rng.integers(1, 256, size=(k, 28, 28))
        grey, masks[index] = compose_panel(
            digits.astype(np.uint8), rng.integers(1, 11, size=k).astype(np.uint8), rng.choice(9, k, replace=False)
        )
        images[index] = np.repeat(grey[..., None], 3, axis=-1).astype(np.float32) / np.float32(255)
    return images, masks


def digit_panels(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """random_panels as the training loop holds them: uint8 (N, 64, 64, 3) pixels and uint8 labels."""
    images, labels = random_panels(count, np.random.default_rng(seed))
    return torch.from_numpy(np.rint(images * 255).astype(np.uint8)), torch.from_numpy(labels)


def mat_bytes(contents: dict, **savemat_options) -> bytes:
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, contents, **savemat_options)
    return buffer.getvalue()


def course_mat(images: np.ndarray, masks: np.ndarray, **savemat_options) -> bytes:
    """A .mat file laid out like the course release: imgMat (H, W, 3, N), semanticMaskMat (H, W, N)."""
    return mat_bytes(
        {
            "imgMat": images.transpose(1, 2, 3, 0).astype(np.float32),
            "semanticMaskMat": masks.transpose(1, 2, 0).astype(np.float32),
            "instanceMaskMat": np.zeros(masks.transpose(1, 2, 0).shape, dtype=np.float32),
        },
        **savemat_options,
    )


def write_zip(path, members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> None:
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def patch_member(path: Path, name: str, *, flag_bits: int = 0, file_size: int | None = None, crc: int | None = None):
    """Rewrites header fields of one member in both its local header and its central directory entry.

    The stdlib cannot write encrypted or lying zips; patching the bytes of a real one can.

    Args:
        path: The zip, changed in place.
        name: The member.
        flag_bits: Bits to set in the general-purpose flags (0x1: encrypted).
        file_size: A new declared uncompressed size.
        crc: A new declared CRC-32.
    """
    data = bytearray(Path(path).read_bytes())
    encoded = name.encode()
    # Local header, then central directory entry: signature, offsets of the flags, CRC, uncompressed size, name.
    headers = ((b"PK\x03\x04", 6, 14, 22, 30), (b"PK\x01\x02", 8, 16, 24, 46))
    for signature, flags_at, crc_at, size_at, name_at in headers:
        start = 0
        while (start := data.find(signature, start)) >= 0:
            if data[start + name_at : start + name_at + len(encoded)] == encoded:
                flags = struct.unpack_from("<H", data, start + flags_at)[0]
                struct.pack_into("<H", data, start + flags_at, flags | flag_bits)
                if crc is not None:
                    struct.pack_into("<I", data, start + crc_at, crc)
                if file_size is not None:
                    struct.pack_into("<I", data, start + size_at, file_size)
            start += 1
    Path(path).write_bytes(bytes(data))


def course_zip(path, rng: np.random.Generator, train_files=3, test_files=2, per_file=4, folder="multi-digit-mnist/"):
    """Writes a small course-like archive; returns {member name: (images, masks)}."""
    contents = {}
    for name in [f"batch{i:05d}.mat" for i in range(1, train_files + 1)] + [
        f"testset{i:03d}.mat" for i in range(1, test_files + 1)
    ]:
        contents[folder + name] = random_panels(per_file, rng, max_digits=9 if name.startswith("test") else 4)
    write_zip(path, {name: course_mat(*arrays) for name, arrays in contents.items()})
    return contents


def imported_names(path: Path) -> set[str]:
    """The absolute imports of a Python file, as dotted names: `import a.b` gives a.b, `from a import c` gives a
    and a.c."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def free_port() -> int:
    """A loopback TCP port that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def dead_server_uri() -> Iterator[str]:
    """An http:// URI on a loopback port that nothing listens on, for as long as the context lasts.

    The port stays bound, without listening: connections to it are refused, and no other process (a server
    another test starts on a free port) can take it meanwhile.
    """
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{held.getsockname()[1]}"


def stage_env() -> dict[str, str]:
    """The environment for a stage subprocess: this checkout importable, no MLflow or DVC settings inherited."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "DVC_"))}
    env["PYTHONPATH"] = str(REPO)
    return env


def write_params(folder: Path, archive: Path, **data) -> None:
    """Writes the repository's params.yaml into folder with data.archive (and any other data.* given) set."""
    params = load_params(REPO / "params.yaml")
    params["data"].update(archive=str(archive), **data)
    (Path(folder) / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every path below folder, relative, with a file's bytes (None for a folder)."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


# Params small enough for a whole `dvc repro` in seconds on a CPU.
TINY = {
    "generate": dict(train_files=4, train_panels_per_file=8, test_files=2, test_panels_per_file=6),
    "model": dict(encoder_channels=[8, 8, 8, 8], decoder_channels=[8, 8, 8, 8]),
    "train": dict(epochs=2, batch_size=8, val_fraction=0.25),
    "runtime": dict(val_batch_size=16),
    "evaluate": dict(batch_size=16, samples=2),
}

# The repository's params.yaml: the one place that holds every setting's default.
PARAMS = load_params(REPO / "params.yaml")


def settings(config_class: type[T], section: str, **changes: object) -> T:
    """`config_class` with params.yaml's values for its fields in `section` (dotted where nested), and `changes`."""
    values = PARAMS
    for part in section.split("."):
        values = values[part]
    names = {field.name for field in dataclasses.fields(config_class)}
    return config_class(**{**{k: v for k, v in values.items() if k in names}, **changes})


def training_settings(**changes: object) -> tuple[TrainConfig, AugmentConfig, RuntimeConfig]:
    """params.yaml's train, augment and runtime settings, each change put in the section that has its key."""

    def pick(config_class: type) -> dict:
        names = {field.name for field in dataclasses.fields(config_class)}
        return {key: value for key, value in changes.items() if key in names}

    train, augment, runtime = pick(TrainConfig), pick(AugmentConfig), pick(RuntimeConfig)
    assert len(train) + len(augment) + len(runtime) == len(changes), f"no such training setting in {changes}"
    return (
        settings(TrainConfig, "train", **train),
        settings(AugmentConfig, "augment", **augment),
        settings(RuntimeConfig, "runtime", **runtime),
    )


def model_config(**changes: object) -> SegNetConfig:
    """params.yaml's model, with the classes and colour channels of the course's panels, and `changes`."""
    return settings(SegNetConfig, "model", **{"num_classes": NUM_CLASSES, "in_channels": 3, **changes})


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without MLflow or DVC settings, with this venv first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    return env | extra


def kill_process_group(process: subprocess.Popen) -> None:
    """SIGKILLs `process`, started with start_new_session=True, and everything it started; reaps it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.communicate()


@contextlib.contextmanager
def serving(command: list[str], cwd: Path, env: dict[str, str], probe: str, log: Path) -> Iterator[None]:
    """Runs the server `command` in its own process group (its workers stop with it), its output in `log`,
    until the URL `probe` answers; stops it on leaving, with SIGTERM, then SIGKILL after 20 s.

    Generous: on two busy cores an MLflow server takes 20-40 s to import itself twice (command, then worker).
    """
    with log.open("w") as output:
        server = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, f"{command[:3]} exited ({server.returncode}):\n{log.read_text()}"
            assert time.monotonic() < deadline, f"{probe} did not answer within 180 s:\n{log.read_text()}"
            try:
                with urllib.request.urlopen(probe, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        yield
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            kill_process_group(server)


def run(
    command: list[str], cwd: Path, check: bool = True, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Runs `command` in `cwd` (environment: clean_env() unless given), failing with its output.

    After `timeout` seconds it is killed with everything it started: its own process group, so that a stage's Python
    under a timed-out `dvc repro` does not train on beside the tests that follow.
    """
    with subprocess.Popen(
        command,
        cwd=cwd,
        env=env or clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_process_group(process)
            raise
    result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def segnet_command(module: str, folder: Path, tracking_uri: str, *arguments: str) -> subprocess.CompletedProcess:
    """`python -m segnet.MODULE ARGUMENTS` run in `folder` as a user runs it, on the store `tracking_uri` (not
    checked: callers assert on its exit status and output)."""
    return subprocess.run(
        [sys.executable, "-m", f"segnet.{module}", *arguments],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(PYTHONPATH=str(REPO), MLFLOW_TRACKING_URI=tracking_uri),
    )


def main_in_process(module: str, folder: Path, *arguments: str, **env: str) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGUMENTS` run in `folder` without a process of its own: its main() called here, in
    clean_env() with `env`, its printout and exit status captured, a refusal (a ValueError, DatasetError
    included) as the one line run_stage prints for it.

    A process spends seconds importing torch and MLflow, so a command's refusals and printouts run here; each
    command keeps a test of its real process (the exit status, no traceback, the warnings it logs).
    """
    main = importlib.import_module(module).main
    stdout = io.StringIO()
    with (
        contextlib.chdir(folder),
        mock.patch.object(sys, "argv", [f"python -m {module}", *arguments]),
        mock.patch.dict(os.environ, clean_env(**env), clear=True),
        contextlib.redirect_stdout(stdout),
    ):
        try:
            main()
            returncode, stderr = 0, ""
        except ValueError as error:
            returncode, stderr = 1, f"ERROR segnet: {error}\n"
    return subprocess.CompletedProcess([module, *arguments], returncode, stdout.getvalue(), stderr)


def segnet_in_process(module: str, folder: Path, tracking_uri: str, *arguments: str) -> subprocess.CompletedProcess:
    """segnet_command's result from main_in_process: `python -m segnet.MODULE ARGUMENTS` on `tracking_uri`."""
    return main_in_process(f"segnet.{module}", folder, *arguments, MLFLOW_TRACKING_URI=tracking_uri)


def set_params(root: Path, overrides: dict) -> None:
    params = load_params(root / "params.yaml")
    for section, values in overrides.items():
        if isinstance(values, dict):
            params[section].update(values)
        else:
            params[section] = values
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def tiny_project(root: Path) -> Path:
    """A fresh clone-like copy of the repository in root (tracked files only), with TINY params committed."""
    root.mkdir(parents=True, exist_ok=True)
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for name in tracked.splitlines():
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    set_params(root, TINY)
    run(["git", "init", "-q"], root)
    # In the repository, not per command: `dvc exp run` commits too, and a CI machine may have no global identity.
    run(["git", "config", "user.name", "test"], root)
    run(["git", "config", "user.email", "test@example.com"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "tiny"], root)
    return root


def apt_install_or_skip(packages: list[str], missing: str) -> None:
    """Installs Debian packages with apt-get, or skips the test saying why (`missing`: what is absent).

    Only as root with apt-get; another apt run holding the dpkg lock is waited for rather than failed on.
    """
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        why = "not running as root" if os.geteuid() != 0 else "no apt-get on this machine"
        pytest.skip(f"{missing}, and it cannot be installed ({why})")
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    wait = ["-o", "DPkg::Lock::Timeout=300"]
    install = ["install", "-y", "-q", "--no-install-recommends", *packages]
    # DPkg::Lock::Timeout waits for dpkg's lock but not for `apt-get update`'s lists lock: two test workers
    # installing at once would see one skip. They take turns instead.
    with open(Path(tempfile.gettempdir()) / "segnet-tests-apt.lock", "w") as turn:
        fcntl.flock(turn, fcntl.LOCK_EX)
        for command in (["apt-get", *wait, "update", "-q"], ["apt-get", *wait, *install]):
            try:
                result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
            except subprocess.TimeoutExpired:
                pytest.skip(f"{missing}, and `{' '.join(command)}` did not finish within 600 s")
            if result.returncode != 0:
                pytest.skip(
                    f"{missing}, and `{' '.join(command)}` failed ({result.returncode}): {result.stderr[-800:]}"
                )
