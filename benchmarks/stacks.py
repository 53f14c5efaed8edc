"""Profile: where the two training loops of the throughput benchmark spend their wall-clock time, by py-spy.

torch.profiler (benchmarks/profile.py) times operators; it cannot see the Python interpreter between them,
nor time spent outside torch (reading .mat files, waiting for the other core). py-spy samples the main
thread's whole stack, Python and native frames together, at a fixed rate, whatever it is doing. Each loop
runs one short epoch in its own process under py-spy (the same measurement as the throughput benchmark,
benchmarks/measure.py), and every sample taken inside the loop is put in one phase of a training step and
one kind of work:
  - phase: reading .mat files, augmentation, forward, loss, backward, optimizer, other (picking the
    batch's panels, casts to and from the model's input and output types, the loop itself);
  - work: the Python interpreter (a Python frame or the interpreter's own C code is the innermost frame),
    waiting for the other core (the innermost frame is in the OpenMP runtime: this thread has finished
    its share of a parallel loop and spins or sleeps until the other thread finishes its own), or native
    code (kernels, oneDNN, the memory allocator, system calls).
py-spy pauses the process at each sample, which slows both loops: the shares, not the speeds, are the result.
Usage: make profile  (or python -m benchmarks.stacks [--files N] [--rate HZ])
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from pathlib import Path

from benchmarks.common import REPO, prepare, read_arguments, small_archive

LOOPS = {"reference": "reference_images_per_second (benchmarks/measure.py", "ours": "train (segnet/training/loop.py"}
# Phases of a step, each named by the frames that mark it: the first phase whose marker is on a sample's
# stack takes it. Backward comes before forward and loss: the autograd engine calls the backward of the
# model's own functions (segnet/speed/cpu_kernels.py), whose frames would otherwise look like a forward.
PHASES = (
    ("reading .mat files", ("loadmat (scipy/io",)),
    ("augmentation", ("(segnet/data/augment.py",)),
    ("backward", ("_engine_run_backward (torch/autograd/graph.py",)),
    ("optimizer", ("step (torch/optim/",)),
    ("loss", ("cross_entropy (torch/nn/functional.py", "(segnet/training/losses.py")),
    ("forward", ("forward (segnet/model/network.py",)),
)
OTHER = "other"
IMPORT = "(<frozen importlib._bootstrap"
WORKS = ("Python interpreter", "waiting for the other core", "native code")
# requirements.txt installs py-spy beside this Python, which is on PATH only in an activated environment.
PY_SPY = shutil.which("py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def parse_raw(text: str) -> Counter:
    """py-spy's raw output (one `frame;frame;...;frame count` line per distinct stack, outermost first) as
    a Counter of stacks (tuples of frames) to sample counts."""
    samples: Counter[tuple[str, ...]] = Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            samples[tuple(stack.split(";"))] += int(count)
    return samples


def phase_of(stack: tuple[str, ...]) -> str:
    for phase, markers in PHASES:
        if any(marker in frame for frame in stack for marker in markers):
            return phase
    return OTHER


def work_of(stack: tuple[str, ...]) -> str:
    """What the innermost frame shows the thread doing."""
    innermost = stack[-1]
    if "(libgomp" in innermost or "(libiomp" in innermost:
        return WORKS[1]
    # py-spy names a Python frame "function (file.py:line)" and puts it in place of the interpreter's
    # evaluation loop; the interpreter's other C code (object allocation, attribute lookup) is in libpython.
    if ".py:" in innermost or "(libpython" in innermost or innermost.startswith("<frozen"):
        return WORKS[0]
    return WORKS[2]


def breakdown(samples: Counter, loop_marker: str) -> tuple[Counter, int]:
    """(phase, work) -> samples for the stacks inside the loop marked by `loop_marker`, and their total.

    Imports are left out: torch imports some of its modules on first use, once per process, inside the
    first step (the fused optimizer, for one, imports torch.distributed.tensor), which a longer run would
    spread over more steps.
    """
    cells: Counter[tuple[str, str]] = Counter()
    for stack, count in samples.items():
        if any(loop_marker in frame for frame in stack) and not any(IMPORT in frame for frame in stack):
            cells[phase_of(stack), work_of(stack)] += count
    return cells, sum(cells.values())


def record(program: list[str], rate: int, output: Path, cwd: Path = REPO, timeout: float | None = None) -> Counter:
    """Runs `program` under py-spy, sampling its main thread `rate` times a second; returns its samples.

    Raises:
        RuntimeError: py-spy or the program failed.
    """
    command = [
        PY_SPY or "py-spy",
        "record",
        "--native",
        "--idle",
        "--rate",
        str(rate),
        "--format",
        "raw",
        "--output",
        str(output),
        "--",
        *program,
    ]
    finished = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    # py-spy 0.4.1 sometimes reports its own child as gone once the child has ended and the samples are
    # written, and exits 1 (github.com/benfred/py-spy/issues/759): that run is complete.
    reaped = "Wrote raw flamegraph data" in finished.stdout and "No child process (os error 10)" in finished.stderr
    if finished.returncode != 0 and not reaped:
        raise RuntimeError(f"{' '.join(command)} failed:\n{finished.stderr[-2000:]}")
    return parse_raw(output.read_text())


def profile_loop(kind: str, data: Path, rate: int, output: Path) -> Counter:
    """Runs one measurement of benchmarks/measure.py under py-spy; returns its samples."""
    return record([sys.executable, "-m", "benchmarks.measure", kind, str(data)], rate, output)


def table(results: dict[str, tuple[Counter, int]]) -> list[str]:
    """One markdown table: for each phase, each loop's share of its wall time, and of that the interpreter's
    and the other core's waiting shares."""
    phases = [phase for phase, _ in PHASES] + [OTHER]
    header = "| phase | " + " | ".join(f"{kind}: share / interpreter / waiting" for kind in results) + " |"
    lines = [header, "|---|" + "---:|" * len(results)]
    for phase in phases + ["all"]:
        cells = []
        for cells_of_loop, total in results.values():
            in_phase = phases if phase == "all" else [phase]
            share = sum(cells_of_loop[p, work] for p in in_phase for work in WORKS) / total
            interpreter = sum(cells_of_loop[p, WORKS[0]] for p in in_phase) / total
            waiting = sum(cells_of_loop[p, WORKS[1]] for p in in_phase) / total
            cells.append(f"{share:.1%} / {interpreter:.1%} / {waiting:.1%}")
        lines.append(f"| {'**all**' if phase == 'all' else phase} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    arguments = read_arguments(__doc__.splitlines()[0], default_files=60, parser=parser)
    if PY_SPY is None:
        raise SystemExit("py-spy is not installed: make venv installs it from requirements.txt")
    with tempfile.TemporaryDirectory(prefix="segnet-stacks-") as name:
        folder = Path(name)
        archive = small_archive(folder, arguments.files, 1)
        with zipfile.ZipFile(archive) as opened:
            opened.extractall(folder / "extracted")  # our own archive, built above: the reference loop reads it
        prepare(archive, folder / "prepared")
        results = {}
        for kind, marker in LOOPS.items():
            results[kind] = breakdown(profile_loop(kind, folder, arguments.rate, folder / f"{kind}.txt"), marker)
    print(
        f"py-spy, {arguments.rate} samples/s of the main thread, one epoch of {arguments.files} files of 32 "
        f"panels per loop; samples inside the loop: "
        + ", ".join(f"{kind} {total}" for kind, (_, total) in results.items())
    )
    print("\n".join(table(results)))


if __name__ == "__main__":
    main()
