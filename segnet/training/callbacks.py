"""Hooks the training loop calls, so tracking and progress display stay out of the loop itself."""

from collections.abc import Callable
from typing import TYPE_CHECKING

from tqdm import tqdm

if TYPE_CHECKING:  # annotations only: the generate and prepare stages import this module without torch
    import torch


class Callback:
    """Base class: override the hooks you need."""

    stop_training = False
    """Set to True (in on_epoch_end) to end training after this epoch, keeping the best epoch so far."""

    def on_train_start(self, total_steps: int, steps_per_epoch: int, start_step: int) -> None:
        """`start_step` is 0, or the step a resumed run continues after."""

    def on_step_end(self, step: int, loss: "torch.Tensor") -> None:
        """`loss` is the step's detached 0-dim loss on the training device; float(loss) waits for the device."""

    def on_epoch_end(self, record: dict) -> None:
        """`record` holds epoch, step, train_loss, val_miou, lr and elapsed_s."""

    def on_train_end(self) -> None:
        pass


class ProgressBar(Callback):
    """A tqdm bar over all steps, showing the epoch, the running loss and the last validation mIoU."""

    LOSS_EVERY = 20

    def __init__(self, epochs: int):
        self.epochs = epochs
        self.bar: tqdm | None = None  # from on_train_start
        self.val_miou: float | None = None

    def on_train_start(self, total_steps: int, steps_per_epoch: int, start_step: int) -> None:
        self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, mininterval=1.0)
        self.bar.set_description(f"epoch {start_step // steps_per_epoch + 1}/{self.epochs}")

    def on_step_end(self, step: int, loss: "torch.Tensor") -> None:
        assert self.bar is not None, "on_train_start comes first"
        self.bar.update(1)
        # Reading the loss stalls a GPU's queue of work, so it is read only now and then.
        if step % self.LOSS_EVERY == 0:
            postfix = {"loss": f"{float(loss):.4f}"}
            if self.val_miou is not None:
                postfix["val_miou"] = f"{self.val_miou:.4f}"
            self.bar.set_postfix(postfix, refresh=False)

    def on_epoch_end(self, record: dict) -> None:
        self.val_miou = record["val_miou"]
        assert self.bar is not None, "on_train_start comes first"
        self.bar.set_description(f"epoch {min(record['epoch'] + 1, self.epochs)}/{self.epochs}")

    def on_train_end(self) -> None:
        self.close()

    def close(self) -> None:
        """Ends the bar's line, so that what is printed next starts on its own; also after a stop or a failure."""
        if self.bar is not None:
            self.bar.close()


class EpochLog(Callback):
    """Hands every epoch's record (loss, validation mIoU, learning rate, elapsed time) to `log(values, step)`,
    such as segnet.tracking.log_metrics, with the epoch as the step."""

    def __init__(self, log: Callable[[dict, int], None]):
        self.log = log

    def on_epoch_end(self, record: dict) -> None:
        self.log({k: v for k, v in record.items() if k not in ("epoch", "step")}, record["epoch"])
