"""SegNet on multi-digit MNIST: data reading, dataset building, model, training, metrics, tracking."""

CLASS_NAMES = ("background", "1", "2", "3", "4", "5", "6", "7", "8", "9", "0")
"""Label index -> name. Index 10 is the digit 0, as in the course release."""
NUM_CLASSES = len(CLASS_NAMES)

# The course generator's panel layout, which the built-in generator reproduces and the augmentation follows:
# 28x28 digits in a 3x3 grid of cells whose top-left corners sit at these offsets on each axis of a 64x64 panel.
# Here, not in generate.py, so that training does not import the generator and its .mat writer (their changes
# would otherwise cost a retraining).
PANEL_SIZE = 64
DIGIT_SIZE = 28
CELL_OFFSETS = (0, 17, 35)
