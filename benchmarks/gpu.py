"""Benchmark: the default pipeline's time to accuracy on a CUDA GPU, with nothing beyond PyTorch, NumPy,
SciPy, PyYAML and tqdm installed.

`make bench` covers a GPU machine that has the project's environment: the pipeline benchmark's `dvc repro`
trains on the GPU through `train.device: auto`, and the throughput table gains GPU rows. This script is
for a GPU box with only a CUDA PyTorch on it (such as the one the device tool lends, which has no MLflow,
DVC or mlxtend and cannot install them): it runs the same three steps as the `prepare`, `train` and
`evaluate` stages, without tracking, on the built-in archive that `dvc repro generate` wrote here:
  1. prepare the archive (segnet.dataset.prepare, as the stage does);
  2. train with params.yaml as it is (train.device: auto, so the GPU and its autocast precision), with
     the stage's seed, validation split and model selection;
  3. score the selected weights on the whole test split in float32, as `evaluate` does.
It prints validation mIoU against wall-clock time per epoch, training images/s (the train stage's
train_images_per_second: whole epochs, validation included), and test mIoU; then evaluation images/s.
Usage: python -m benchmarks.gpu [--archive data/builtin/multi-digit-mnist.zip] [--epochs N] [--set train.KEY=VALUE]...
(--set, like `dvc exp run -S`, trains with another setting, e.g. --set train.batch_size=64 --set train.lr=0.0045.)
"""

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import REPO
from benchmarks.measure import synchronize
from segnet.data.loading import load_split, split_indices
from segnet.evaluation.inference import accumulate_confusion
from segnet.evaluation.metrics import summarize
from segnet.model.network import SegNet, SegNetConfig
from segnet.params import build, load_params
from segnet.cores import available_cores
from segnet.devices import select_amp_dtype, select_device
from segnet.dataset.prepare import prepare_dataset
from segnet.training.loop import TrainConfig, set_seed, train


def train_setting(text: str) -> tuple[str, object]:
    """`train.KEY=VALUE` -> (KEY, VALUE): the value as a JSON number, boolean or string, else the text itself.

    Not PyYAML, which is all this script may have: YAML 1.1 reads 5e-05 as a string.
    """
    key, separator, value = text.partition("=")
    if not separator or not key.startswith("train."):
        raise argparse.ArgumentTypeError(f"{text!r}: expected train.KEY=VALUE")
    try:
        return key.removeprefix("train."), json.loads(value)
    except json.JSONDecodeError:
        return key.removeprefix("train."), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=REPO / "data" / "builtin" / "multi-digit-mnist.zip")
    parser.add_argument("--epochs", type=int, help="train.epochs instead of params.yaml's (a quicker check)")
    parser.add_argument("--set", type=train_setting, action="append", default=[], metavar="train.KEY=VALUE",
                        help="a train setting instead of params.yaml's, as `dvc exp run -S` sets it (repeatable)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    arguments = parser.parse_args()
    params = load_params(REPO / "params.yaml")
    settings = {**params["train"], **({"epochs": arguments.epochs} if arguments.epochs else {}), **dict(arguments.set)}
    try:
        train_config = build(TrainConfig, "train", settings)
    except ValueError as error:
        parser.error(str(error))
    changed = {key: value for key, value in settings.items() if params["train"].get(key) != value}
    model_config = build(SegNetConfig, "model", params["model"])
    device = select_device(train_config.device)
    amp_dtype = select_amp_dtype(train_config.precision, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    print(f"device {device} ({name}), autocast {amp_dtype}, torch {torch.__version__}, "
          f"{available_cores()} CPU cores; train settings changed from params.yaml: {changed or 'none'}", flush=True)

    with tempfile.TemporaryDirectory(prefix="segnet-gpu-") as folder:
        prepared = Path(folder) / "prepared"
        start = time.perf_counter()
        prepare_dataset(arguments.archive, prepared, workers=available_cores())
        prepare_seconds = time.perf_counter() - start
        images, labels = load_split(prepared, "train")
        train_index, val_index = split_indices(len(images), train_config.val_fraction, params["seed"])
        set_seed(params["seed"])
        result = train(SegNet(model_config), images, labels, train_index, val_index, model_config.num_classes,
                       train_config, seed=params["seed"])

        model = SegNet(model_config)
        model.load_state_dict(result.best_state)
        model.to(device=device, memory_format=torch.channels_last)
        test_images, test_labels = load_split(prepared, "test")
        batch_size = params["evaluate"]["batch_size"]
        accumulate_confusion(model, test_images[:batch_size], test_labels[:batch_size], model_config.num_classes,
                             batch_size, device)  # warm-up: cuDNN picks its algorithms
        synchronize(device)
        start = time.perf_counter()
        confusion = accumulate_confusion(model, test_images, test_labels, model_config.num_classes, batch_size,
                                         device)
        evaluation_seconds = time.perf_counter() - start
    metrics = summarize(confusion)

    print("| epoch | elapsed s | train loss | val miou |")
    print("|---:|---:|---:|---:|")
    for record in result.history:
        print(f"| {record['epoch']} | {record['elapsed_s']:.1f} | {record['train_loss']:.4f} | "
              f"{record['val_miou']:.4f} |")
    summary = {
        "device": name,
        "settings_changed": changed,
        "precision": result.amp_dtype,
        "torch": torch.__version__,
        "prepare_seconds": prepare_seconds,
        "train_seconds": result.train_seconds,
        "train_images_per_second": result.images_per_second,
        "best_epoch": result.best_epoch,
        "best_val_miou": result.best_val_miou,
        "test_miou": metrics["miou"],
        "test_miou_digits": metrics["miou_digits"],
        "evaluation_images_per_second": len(test_images) / evaluation_seconds,
    }
    print(f"Time to accuracy on {name} ({result.amp_dtype} autocast): test miou {metrics['miou']:.4f} after "
          f"{result.train_seconds:.1f} s of training ({len(result.history)} epochs, validation included, "
          f"{summary['train_images_per_second']:.0f} images/s); best validation mIoU {result.best_val_miou:.4f} "
          f"at epoch {result.best_epoch}. Evaluation (float32): {summary['evaluation_images_per_second']:.0f} "
          f"images/s. Prepare: {prepare_seconds:.1f} s.")
    if arguments.json:
        arguments.json.write_text(json.dumps({**summary, "history": result.history}, indent=1))


if __name__ == "__main__":
    main()
