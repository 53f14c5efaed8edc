"""The prepared arrays as training and evaluation read them: loading a split, model input, augmentation."""

from segnet.data.augment import AugmentConfig, augment
from segnet.data.loading import load_split, split_indices, to_float_input, to_input

__all__ = ["AugmentConfig", "augment", "load_split", "split_indices", "to_float_input", "to_input"]
