"""The SegNet network: plain PyTorch layers, read top-down. Training's speed-ups live in segnet.speed."""

from segnet.model.network import SegNet, SegNetConfig, transform_input

__all__ = ["SegNet", "SegNetConfig", "transform_input"]
