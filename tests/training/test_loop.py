from pathlib import Path

import numpy as np
import pytest
import torch

from segnet.cores import available_cores
from segnet.data.loading import split_indices, to_float_input, to_input
from segnet.devices import select_amp_dtype
from segnet.evaluation.inference import accumulate_confusion
from segnet.evaluation.metrics import mean_iou
from segnet.model import SegNet
from segnet.params import build
from segnet.speed import cpu_kernels, winograd
from segnet.training import RuntimeConfig, TrainConfig, TrainingInterrupted, set_seed, train
from segnet.training.callbacks import Callback
from segnet.training.checkpoint import Checkpointer, fingerprint, load_checkpoint, stage_code
from segnet.training.losses import class_weights
from segnet.training.optim import make_optimizer, make_schedule
from tests.helpers import PARAMS, digit_panels, model_config, random_panels, settings, training_settings


def test_median_frequency_weights_by_hand():
    # frequencies 0.7, 0.2, 0.1 (and one absent class): median 0.2 -> weights 0.2/0.7, 1, 2, 0
    weights = class_weights(torch.tensor([70, 20, 10, 0]))
    assert weights.tolist() == pytest.approx([0.2 / 0.7, 1.0, 2.0, 0.0])


def test_validation_split_is_seeded_and_disjoint():
    train_index, val_index = split_indices(100, 0.1, seed=3)
    assert len(val_index) == 10 and len(train_index) == 90
    assert not set(train_index.tolist()) & set(val_index.tolist())
    assert torch.equal(val_index, split_indices(100, 0.1, seed=3)[1])
    assert not torch.equal(val_index, split_indices(100, 0.1, seed=4)[1])


def test_to_input_keeps_bytes_makes_other_pixels_float_and_uses_channels_last():
    images = torch.full((2, 16, 16, 3), 255, dtype=torch.uint8)
    batch = to_input(images, torch.device("cpu"))
    assert batch.shape == (2, 3, 16, 16) and batch.dtype == torch.uint8 and batch.max() == 255
    assert batch.is_contiguous(memory_format=torch.channels_last)
    batch = to_input(images.double() / 255, torch.device("cpu"), channels_last=False)
    assert batch.dtype == torch.float32 and batch.max() == 1.0 and batch.is_contiguous()


def test_to_float_input_scales_bytes_to_the_unit_interval():
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).reshape(1, 1, 1, 3)
    batch = to_float_input(images)
    assert batch.shape == (1, 3, 1, 1) and batch.dtype == torch.float32 and batch.is_contiguous()
    assert torch.equal(batch.flatten(), torch.tensor([0.0, 51.0, 255.0]) / 255)


def test_precision_choice():
    cpu = torch.device("cpu")
    assert select_amp_dtype("float32", cpu) is None
    assert select_amp_dtype("bfloat16", cpu) == torch.bfloat16


def test_training_turns_off_tf32_so_float32_on_a_gpu_is_ieee_float32():
    # PyTorch's default lets cuDNN compute float32 convolutions in TF32 on Ampere and newer GPUs. The flags are
    # global, so they are put back afterwards; on this CPU-only build they are plain settings to read.
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        images, labels = digit_panels(8, 2)
        model = SegNet(model_config(encoder_channels=(4, 4, 4, 4), decoder_channels=(4, 4, 4, 4)))
        config = training_settings(epochs=1, batch_size=8, precision="float32")
        train(model, images, labels, torch.arange(8), torch.arange(8), 11, *config, seed=0)
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (False, False)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.parametrize(
    "section, bad, message",
    [
        ("train", dict(epochs=0), "epochs: must be an integer >= 1, got 0"),
        ("train", dict(lr=-1.0), "lr: must be a number > 0, got -1.0"),
        ("train", dict(schedule="step"), "schedule: must be one of onecycle, cosine, constant, got 'step'"),
        ("train", dict(val_fraction=1.0), r"val_fraction: must be a number in \(0, 1\), got 1.0"),
        ("runtime", dict(precision="float16"), "precision: must be one of auto, float32, bfloat16, got 'float16'"),
        ("runtime", dict(threads=-1), r"threads: must be an integer >= 0 \(0: one per core\), got -1"),
        ("runtime", dict(winograd_min_channels=0), "winograd_min_channels: must be an integer >= 1, got 0"),
        ("runtime", dict(device="gpu"), r"device: 'gpu' is not a device \(use auto, cpu, cuda or cuda:N\)"),
    ],
)
def test_nonsense_train_settings_are_refused_by_name_with_the_rule(section, bad, message):
    config_class = {"train": TrainConfig, "runtime": RuntimeConfig}[section]
    with pytest.raises(ValueError, match=f"^params.yaml {section}.{message}$"):
        build(config_class, section, {**PARAMS[section], **bad})
    # The library's own message names the key alone; the file and section are added where params are read.
    with pytest.raises(ValueError, match=f"^{message}$"):
        settings(config_class, section, **bad)


def test_more_threads_than_cores_are_refused_by_name():
    cores = available_cores()
    with pytest.raises(ValueError, match=f"^params.yaml runtime.threads: {cores + 1} is more than the {cores} cores"):
        build(RuntimeConfig, "runtime", {**PARAMS["runtime"], "threads": cores + 1})
    assert settings(RuntimeConfig, "runtime", threads=cores).threads == cores


# Values of the wrong YAML type (`dvc exp run -S train.channels_last=yes` gives the string "yes"), one per
# field type; a YAML true is not an integer, and an integer is a fine number.
@pytest.mark.parametrize(
    "section, values, message",
    [
        ("train", {"epochs": 2.5}, "train.epochs: must be an integer, got 2.5"),
        ("train", {"epochs": True}, "train.epochs: must be an integer, got True"),
        ("train", {"lr": "0.1"}, "train.lr: must be a number, got '0.1'"),
        ("train", {"optimizer": 1}, "train.optimizer: must be a string, got 1"),
        ("runtime", {"channels_last": "yes"}, "runtime.channels_last: must be true or false, got 'yes'"),
        ("train", {"ema_decay": 0.9}, r"train: unknown key\(s\) \['ema_decay'\]; known: .*"),
    ],
)
def test_train_settings_of_the_wrong_type_are_refused_by_name(section, values, message):
    config_class = {"train": TrainConfig, "runtime": RuntimeConfig}[section]
    with pytest.raises(ValueError, match=f"^params.yaml {message}$"):
        build(config_class, section, {**PARAMS[section], **values})
    assert build(TrainConfig, "train", {**PARAMS["train"], "lr": 1}).lr == 1
    with pytest.raises(ValueError, match=r"^params.yaml train: missing key\(s\) \['lr'\]$"):
        build(TrainConfig, "train", {k: v for k, v in PARAMS["train"].items() if k != "lr"})


class Recorder(Callback):
    def __init__(self):
        self.records, self.steps = [], 0

    def on_step_end(self, step, loss):
        self.steps = step

    def on_epoch_end(self, record):
        self.records.append(record)


@pytest.mark.parametrize("changes", [{}, dict(class_weighting="median_frequency"), dict(winograd_min_channels=8)])
def test_training_learns_and_returns_the_best_epochs_weights(changes, monkeypatch):
    winograd_calls = []
    conv3x3 = winograd.conv3x3
    monkeypatch.setattr(winograd, "conv3x3", lambda x, weight: winograd_calls.append(x.shape) or conv3x3(x, weight))
    rng = np.random.default_rng(0)
    images, labels = random_panels(48, rng)
    images = torch.from_numpy(np.rint(images * 255).astype(np.uint8))
    labels = torch.from_numpy(labels)
    set_seed(0)
    model = SegNet(model_config(encoder_channels=(8, 8, 8, 8), decoder_channels=(8, 8, 8, 8)))
    config = training_settings(epochs=4, batch_size=8, lr=0.01, precision="float32", overlay_probability=0.5, **changes)
    recorder = Recorder()
    result = train(
        model,
        images,
        labels,
        torch.arange(40),
        torch.arange(40, len(images)),
        11,
        *config,
        seed=0,
        callbacks=[recorder],
    )
    assert recorder.steps == 4 * (40 // 8)
    # Winograd's F(2x2, 3x3) only where asked (the default needs 64 channels): then in every conv-bn-relu block
    # but the first, whose input has 3 channels.
    winograd_blocks = 7 if "winograd_min_channels" in changes and cpu_kernels.extension() is not None else 0
    assert len(result.winograd_layers) == winograd_blocks
    assert len(winograd_calls) == winograd_blocks * recorder.steps  # every training step, never in validation
    assert result.images_trained == 4 * 40 and result.images_per_second == 160 / result.train_seconds
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4] == [r["epoch"] for r in recorder.records]
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    best = max(result.history, key=lambda r: r["val_miou"])
    assert result.best_epoch == best["epoch"] and result.best_val_miou == best["val_miou"]
    # The returned weights are the best epoch's: they reproduce its validation mIoU.
    model.load_state_dict(result.best_state)
    confusion = accumulate_confusion(model, images[40:], labels[40:], 11, 16, torch.device("cpu"))
    assert mean_iou(confusion) == pytest.approx(result.best_val_miou)


@pytest.mark.parametrize("steps", [1, 2, 5, 10])
def test_one_cycle_schedule_runs_however_few_steps_there_are(steps):
    # 5 steps with warmup_fraction 0.2 is a one-step warm-up, which OneCycleLR alone divides by zero on.
    images, labels = digit_panels(8 * steps, 2)
    set_seed(0)
    model = SegNet(model_config(encoder_channels=(4, 4, 4, 4), decoder_channels=(4, 4, 4, 4)))
    config = training_settings(epochs=1, batch_size=8, lr=0.01, precision="float32", warmup_fraction=0.2)
    result = train(model, images, labels, torch.arange(len(images)), torch.arange(8), 11, *config, seed=0)
    assert result.history[-1]["step"] == steps


def _resume_setup():
    rng = np.random.default_rng(4)
    images, labels = random_panels(40, rng)
    images = torch.from_numpy(np.rint(images * 255).astype(np.uint8))
    # bfloat16 autocast where the CPU has it: resuming must be exact in the precision training really uses.
    config = dict(epochs=3, batch_size=8, lr=0.01, overlay_probability=0.5, deform_pixels=1.0)
    return images, torch.from_numpy(labels), config


def _fresh_model():
    set_seed(0)
    return SegNet(model_config(encoder_channels=(8, 8, 8, 8), decoder_channels=(8, 8, 8, 8)))


def _fit(images, labels, config, **options):
    return train(
        _fresh_model(),
        images,
        labels,
        torch.arange(32),
        torch.arange(32, len(images)),
        11,
        *training_settings(**config),
        seed=0,
        **options,
    )


@pytest.mark.parametrize(
    "stop_after, every, changes",
    [
        (1, 3, {}),
        (4, 3, {}),
        (8, 0, {}),
        (9, 2, {}),
        (11, 5, {}),
        (6, 0, dict(overlay_partners=1, class_weighting="median_frequency")),
        (5, 2, dict(winograd_min_channels=8)),
    ],
)
def test_a_run_stopped_at_any_step_resumes_to_exactly_the_uninterrupted_result(tmp_path, stop_after, every, changes):
    images, labels, config = _resume_setup()  # 4 steps per epoch, 12 in all
    config = {**config, **changes}
    uninterrupted = _fit(images, labels, config)

    fingerprint = "f" * 64
    checkpointer = Checkpointer(tmp_path / "run.pt", every, fingerprint, extra={"run": "a"})
    with pytest.raises(TrainingInterrupted) as stopped:
        _fit(
            images,
            labels,
            config,
            checkpointer=checkpointer,
            callbacks=[StopAfter(stop_after)],
            stop_requested=StopAfter.requested,
        )
    assert stopped.value.step == stop_after and stopped.value.checkpoint == tmp_path / "run.pt"

    resume = load_checkpoint(tmp_path / "run.pt", fingerprint)
    assert resume["extra"] == {"run": "a"} and resume["state"]["loop"]["step"] == stop_after
    steps = StepLog()
    resumed = _fit(images, labels, config, checkpointer=checkpointer, resume=resume["state"], callbacks=[steps])
    # Only the remaining steps ran, yet the result is the uninterrupted one to the bit.
    assert resumed.resumed_from_step == stop_after and steps.seen == list(range(stop_after + 1, 13))
    assert resumed.best_epoch == uninterrupted.best_epoch
    assert resumed.images_trained == uninterrupted.images_trained  # the run's images/s counts the whole run
    for name, tensor in uninterrupted.best_state.items():
        assert torch.equal(resumed.best_state[name], tensor), name
    keep = ("epoch", "step", "train_loss", "val_miou", "lr")

    def without_times(history):
        return [{k: r[k] for k in keep} for r in history]

    assert without_times(resumed.history) == without_times(uninterrupted.history)


class StepLog(Callback):
    def __init__(self):
        self.seen = []

    def on_step_end(self, step, loss):
        self.seen.append(step)


class StopAfter(Callback):
    """Asks the loop to stop once `steps` steps have run, as a Ctrl-C during that step would."""

    flag = False

    def __init__(self, steps):
        self.steps = steps
        StopAfter.flag = False

    def on_step_end(self, step, loss):
        StopAfter.flag = step >= self.steps

    @staticmethod
    def requested():
        return StopAfter.flag


def test_a_checkpoint_for_other_settings_or_a_damaged_one_is_not_resumed(tmp_path):
    images, labels, config = _resume_setup()
    Checkpointer(tmp_path / "run.pt", 0, "a" * 64).save({"loop": {}})
    assert load_checkpoint(tmp_path / "run.pt", "a" * 64) is not None
    assert load_checkpoint(tmp_path / "run.pt", "b" * 64) is None
    (tmp_path / "run.pt").write_bytes(b"not a checkpoint")
    assert load_checkpoint(tmp_path / "run.pt", "a" * 64) is None
    assert load_checkpoint(tmp_path / "missing.pt", "a" * 64) is None


def test_the_fingerprint_follows_settings_and_code(tmp_path):
    code = tmp_path / "train.py"
    code.write_text("x = 1\n")
    first = fingerprint({"lr": 0.1}, [Path("train.py")], tmp_path)
    assert fingerprint({"lr": 0.1}, [Path("train.py")], tmp_path) == first
    assert fingerprint({"lr": 0.2}, [Path("train.py")], tmp_path) != first
    code.write_text("x = 2\n")
    assert fingerprint({"lr": 0.1}, [Path("train.py")], tmp_path) != first


def test_the_checkpoint_fingerprint_covers_exactly_the_train_stages_code(monkeypatch):
    # The C++ kernels compute batch norm and pooling in training: a checkpoint made with other kernels must
    # not resume, or the weights would mix two versions of them. Code train does not run (the tracking server,
    # evaluation's bootstrap is run by it though) must not throw a resumable checkpoint away.
    monkeypatch.chdir("/")  # the project's dvc.yaml is found beside the package, wherever the stage runs
    names = {path.as_posix() for path in stage_code("train")}
    assert {
        "segnet/speed/cpu_kernels.cpp",
        "segnet/speed/winograd.py",
        "stages/train.py",
        "segnet/training/loop.py",
        "segnet/model/network.py",
    } <= names
    assert (
        not {
            "segnet/tracking/server.py",
            "segnet/tracking/runs.py",
            "segnet/server.py",
            "segnet/cli.py",
            "stages/evaluate.py",
            "segnet/dataset/generate.py",
        }
        & names
    )


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "constant"])
def test_sgd_keeps_the_momentum_it_is_given_under_every_schedule(schedule):
    model = SegNet(model_config(encoder_channels=[4, 4], decoder_channels=[4, 4]))
    config = settings(TrainConfig, "train", optimizer="sgd", momentum=0.5, schedule=schedule)
    optimizer = make_optimizer(model, config)
    schedule = make_schedule(optimizer, config, total_steps=20)
    for _ in range(10):
        optimizer.step()
        schedule.step()
        assert [group["momentum"] for group in optimizer.param_groups] == [0.5, 0.5]


def test_adamw_under_one_cycle_cycles_beta1_against_the_learning_rate():
    model = SegNet(model_config(encoder_channels=[4, 4], decoder_channels=[4, 4]))
    config = settings(TrainConfig, "train", warmup_fraction=0.5)
    optimizer = make_optimizer(model, config)
    schedule = make_schedule(optimizer, config, total_steps=21)
    beta1 = [optimizer.param_groups[0]["betas"][0]]
    for _ in range(20):
        optimizer.step()
        schedule.step()
        beta1.append(optimizer.param_groups[0]["betas"][0])
    assert beta1[0] == pytest.approx(0.95) and beta1[-1] == pytest.approx(0.95)
    assert min(beta1) == pytest.approx(0.85, abs=0.005)  # at the peak of the learning rate


def test_momentum_outside_zero_to_one_is_refused_by_name():
    with pytest.raises(ValueError, match=r"^params.yaml train.momentum: must be a number in \[0, 1\), got 1.0$"):
        build(TrainConfig, "train", {**PARAMS["train"], "optimizer": "sgd", "momentum": 1.0})
    # Momentum 0 is plain SGD: Nesterov's look-ahead (which torch refuses without momentum) is off.
    model = SegNet(model_config(encoder_channels=[4, 4], decoder_channels=[4, 4]))
    optimizer = make_optimizer(model, settings(TrainConfig, "train", optimizer="sgd", momentum=0.0))
    assert [(group["momentum"], group["nesterov"]) for group in optimizer.param_groups] == [(0.0, False)] * 2
