"""Full-size data: streaming prepare (throughput, peak memory) and memory-mapped training on 100k panels.

Builds two archives with the built-in generator, laid out like the original generator's full release
(500 panels per .mat file, training panels with 0-4 digits, test panels with 0-9): 10k and 100k panels
(20 and 200 files, one in twenty a test file). Each is prepared in a fresh process, with one parsing thread
and with one per core, and the process's peak resident memory is read from the kernel: streaming keeps it
the same at 10k and 100k panels. Then training runs for a fixed number of steps on the prepared 100k
panels, memory-mapped, and its images/s and peak memory (anonymous, and file-backed) are reported.
Writes benchmarks/results/large.md and .json.
Usage: make bench-large  (or python -m benchmarks.large [--images 100000] [--small 10000] [--steps 40])
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import psutil

from benchmarks.common import REPO, report
from segnet.cores import available_cores
from segnet.dataset.generate import SplitSpec, build_archive

PANELS_PER_FILE = 500
TEST_SHARE = 20  # one file in twenty holds test panels


def build(folder: Path, images: int) -> Path:
    files = images // PANELS_PER_FILE
    test_files = max(1, files // TEST_SHARE)
    archive = folder / f"archive-{images}.zip"
    build_archive(
        archive,
        seed=0,
        train=SplitSpec(files - test_files, PANELS_PER_FILE, 0, 4),
        test=SplitSpec(test_files, PANELS_PER_FILE, 0, 9),
        test_digit_fraction=0.2,
    )
    return archive


# Each measurement runs in a new interpreter, so that its peak memory is its own. Prepare runs without torch,
# as the stage does (benchmarks.common would import it).
PREPARE = """
import json, sys, time
from pathlib import Path
from segnet.dataset import ArchiveLimits
from segnet.dataset.prepare import prepare_dataset
from segnet.params import build, load_params
data = load_params(Path("params.yaml"))["data"]
limits = build(ArchiveLimits, "data", {k: v for k, v in data.items() if k not in ("archive", "workers")})
start = time.perf_counter()
summary = prepare_dataset(Path(sys.argv[1]), Path(sys.argv[2]), limits=limits, workers=int(sys.argv[3]))
seconds = time.perf_counter() - start
# The kernel's own high-water mark of this process's resident memory (threads share it): exact, not sampled.
peak_kib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "files": summary["train_files"] + summary["test_files"],
                  "images": summary["train_images"] + summary["test_images"], "peak_rss_mib": peak_kib / 1024}))
"""

TRAIN = """
import json, sys, time
from pathlib import Path
from benchmarks.common import load_settings, train_model
from segnet.data.loading import load_split, split_indices
from segnet.training.callbacks import Callback
from segnet.training.loop import TrainingInterrupted

steps = int(sys.argv[2])
settings = load_settings()
images, labels = load_split(Path(sys.argv[1]), "train", mmap=True)
train_index, val_index = split_indices(len(images), settings["val_fraction"], 0)

class Clock(Callback):
    # The first steps warm up allocators and kernels; the rate is timed from step 5 on.
    def on_step_end(self, step, loss):
        if step == 5:
            self.start = time.perf_counter()
        self.step = step

clock = Clock()
try:
    train_model(settings, images, labels, train_index, val_index, callbacks=[clock],
                stop_requested=lambda: clock.step >= steps)
except TrainingInterrupted:
    pass
seconds = time.perf_counter() - clock.start
print(json.dumps({"images_per_second": (clock.step - 5) * settings["batch_size"] / seconds,
                  "dataset_mib": (images.nbytes + labels.nbytes) / 2**20}))
"""


def measure(script: str, *arguments) -> dict:
    """Runs `script` in a new interpreter; returns what it printed plus the peak resident memory it used.

    The peak is sampled every 20 ms from the kernel (prepare also reports the kernel's exact high-water mark
    itself): `rss_mib` over the process and any children together (getrusage's ru_maxrss will not do: a
    child inherits its parent's high-water mark at fork), and `anonymous_mib`, its resident memory less
    file-backed pages. Pages of a memory-mapped file count as resident once touched (the kernel maps the
    page cache's pages around each page read), but they are the page cache's, dropped under memory
    pressure; anonymous memory is what the process itself holds.
    """
    # Output goes to files, not pipes: a pipe nobody reads until the end would stall a talkative child.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = psutil.Popen([sys.executable, "-c", script, *map(str, arguments)], cwd=REPO, stdout=out, stderr=err)
        peak_rss = peak_anonymous = 0
        while process.poll() is None:
            try:
                memory = [p.memory_info() for p in [process, *process.children(recursive=True)]]
            except psutil.Error:  # a process ended between listing and reading it
                continue
            peak_rss = max(peak_rss, sum(m.rss for m in memory))
            peak_anonymous = max(peak_anonymous, sum(m.rss - m.shared for m in memory))
            time.sleep(0.02)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if process.returncode != 0:
        raise SystemExit(f"measurement failed:\n{stderr}")
    peaks = {"rss_mib": peak_rss / 2**20, "anonymous_mib": peak_anonymous / 2**20}
    return json.loads(stdout.strip().splitlines()[-1]) | peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000, help="panels in the large archive")
    parser.add_argument("--small", type=int, default=10_000, help="panels in the small archive")
    parser.add_argument("--steps", type=int, default=40, help="training steps to time on the large archive")
    arguments = parser.parse_args()
    cores = available_cores()
    rows = []
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        for images in (arguments.small, arguments.images):
            archive = build(folder, images)
            for workers in sorted({1, cores}):  # threads that parse .mat files
                prepared = folder / f"prepared-{images}-{workers}"
                result = measure(PREPARE, archive, prepared, workers)
                rows.append((images, workers, archive.stat().st_size / 2**20, result))
                print(f"{images} panels, {workers} thread(s): {result}", flush=True)
        trained = measure(TRAIN, folder / f"prepared-{arguments.images}-{cores}", arguments.steps)

    small = next(r for i, w, _, r in rows if i == arguments.small and w == cores)
    large = next(r for i, w, _, r in rows if i == arguments.images and w == cores)
    lines = [
        f"Machine: {cores} cores. Panels per file: {PANELS_PER_FILE}.",
        "",
        "| panels | files | archive MiB | threads | prepare s | files/s | panels/s | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {images:,} | {result['files']} | {size:.0f} | {workers} | {result['seconds']:.1f} | "
            f"{result['files'] / result['seconds']:.1f} | {result['images'] / result['seconds']:.0f} | "
            f"{result['peak_rss_mib']:.0f} |"
            for images, workers, size, result in rows
        ],
        "",
        f"Peak RSS of prepare, {arguments.images:,} against {arguments.small:,} panels ({cores} threads): "
        f"{large['peak_rss_mib'] / small['peak_rss_mib']:.2f}x",
        f"Training on the prepared {arguments.images:,} panels, memory-mapped ({trained['dataset_mib']:.0f} MiB "
        f"on disk): {trained['images_per_second']:.1f} images/s over {arguments.steps - 5} steps; peak RSS "
        f"{trained['rss_mib']:.0f} MiB, of which anonymous {trained['anonymous_mib']:.0f} MiB (the rest: pages of "
        "the memory-mapped arrays, the page cache's)",
    ]
    report(
        "large",
        lines,
        {
            "prepare": [
                {"panels": images, "threads": workers, "archive_mib": size, **result}
                for images, workers, size, result in rows
            ],
            "train": trained,
        },
    )


if __name__ == "__main__":
    main()
