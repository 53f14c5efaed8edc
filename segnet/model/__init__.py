"""The SegNet network (plain PyTorch layers, read top-down) and the model folder it is saved in. Training's
speed-ups live in segnet.speed."""

from segnet.model.network import SegNet, SegNetConfig, transform_input
from segnet.model.storage import MODEL_FILE, check_model_folder, load_model, read_model, save_model

__all__ = [
    "MODEL_FILE",
    "SegNet",
    "SegNetConfig",
    "check_model_folder",
    "load_model",
    "read_model",
    "save_model",
    "transform_input",
]
