"""SegNet on multi-digit MNIST: data reading, dataset building, model, training, metrics, tracking."""

CLASS_NAMES = ("background", "1", "2", "3", "4", "5", "6", "7", "8", "9", "0")
"""Label index -> name. Index 10 is the digit 0, as in the course release."""
NUM_CLASSES = len(CLASS_NAMES)
