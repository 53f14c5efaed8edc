"""Reading one multi-digit MNIST .mat file into validated arrays.

Format (MATLAB 5, as written by scipy.io.savemat):
    imgMat           float (H, W, 3, N), values in [0, 1]
    semanticMaskMat  (H, W, N), integral values 0-10 (0 background, 1-9 digits, 10 digit 0)
Other keys are ignored.
"""

import io

import numpy as np
import scipy.io

from segnet import NUM_CLASSES
from segnet.dataset import mat5
from segnet.errors import DatasetError

IMAGE_KEY = "imgMat"
MASK_KEY = "semanticMaskMat"
# MATLAB classes that load as plain numeric arrays; cells, structs, objects and sparse matrices do not.
_NUMERIC_CLASSES = {"double", "single", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"}


def read_panels(data: bytes, source: str, *, max_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Parses and validates the bytes of one .mat file.

    Args:
        data: The raw file content.
        source: A human-readable name for error messages, e.g. "archive.zip:batch00001.mat".
        max_bytes: The most bytes the file may grow to once its compressed variables are inflated.

    Returns:
        images: float32 (N, H, W, 3) in [0, 1].
        masks: uint8 (N, H, W) with values 0-10.

    Raises:
        DatasetError: The file is not a readable MATLAB 5 .mat file, inflates beyond max_bytes or
            breaks the format.
    """
    # Uncompressed first: scipy would inflate compressed variables without any limit.
    data = mat5.inflate(data, source, max_bytes=max_bytes)
    _check_variables(data, source)
    try:
        contents = scipy.io.loadmat(io.BytesIO(data), variable_names=[IMAGE_KEY, MASK_KEY])
    except Exception as error:  # scipy raises many types (ValueError, TypeError, OSError, ...)
        raise DatasetError(f"{source}: not a readable MATLAB 5 .mat file ({type(error).__name__}: {error})") from error
    image, mask = contents.get(IMAGE_KEY), contents.get(MASK_KEY)
    if not isinstance(image, np.ndarray) or not isinstance(mask, np.ndarray):
        raise DatasetError(f"{source}: '{IMAGE_KEY}' and '{MASK_KEY}' must be numeric arrays")

    if image.dtype.kind != "f":
        raise DatasetError(f"{source}: '{IMAGE_KEY}' has dtype {image.dtype}, expected float32 or float64")
    if mask.dtype.kind not in "fiu":
        raise DatasetError(f"{source}: '{MASK_KEY}' has dtype {mask.dtype}, expected a real number type")

    # loadmat drops a trailing singleton dimension, so a file with one panel arrives as (H, W, 3).
    if image.ndim == 3 and mask.ndim == 2:
        image, mask = image[..., None], mask[..., None]
    if image.ndim != 4 or image.shape[2] != 3:
        raise DatasetError(f"{source}: '{IMAGE_KEY}' has shape {image.shape}, expected (H, W, 3, N)")
    if mask.ndim != 3:
        raise DatasetError(f"{source}: '{MASK_KEY}' has shape {mask.shape}, expected (H, W, N)")
    if image.shape[:2] != mask.shape[:2] or image.shape[3] != mask.shape[2]:
        raise DatasetError(
            f"{source}: '{IMAGE_KEY}' {image.shape} and '{MASK_KEY}' {mask.shape} disagree "
            "(expected (H, W, 3, N) and (H, W, N))"
        )
    if image.size == 0:
        raise DatasetError(f"{source}: '{IMAGE_KEY}' has shape {image.shape}: no panels, or panels without pixels")

    if not np.isfinite(image).all():
        raise DatasetError(f"{source}: '{IMAGE_KEY}' holds NaN or infinite pixels")
    if image.min() < 0.0 or image.max() > 1.0:
        raise DatasetError(f"{source}: '{IMAGE_KEY}' pixels lie in [{image.min():g}, {image.max():g}], expected [0, 1]")
    if mask.dtype.kind == "f":
        if not np.isfinite(mask).all() or not np.array_equal(mask, np.round(mask)):
            raise DatasetError(f"{source}: '{MASK_KEY}' holds labels that are not integers")
    if mask.min() < 0 or mask.max() >= NUM_CLASSES:
        raise DatasetError(
            f"{source}: '{MASK_KEY}' labels lie in [{mask.min():g}, {mask.max():g}], expected 0-{NUM_CLASSES - 1}"
        )

    images = np.ascontiguousarray(image.transpose(3, 0, 1, 2), dtype=np.float32)
    masks = np.ascontiguousarray(mask.transpose(2, 0, 1)).astype(np.uint8)
    return images, masks


def _check_variables(data: bytes, source: str) -> None:
    """Checks from the variable headers alone that both keys are there and hold plain numeric arrays.

    Loading a cell or struct allocates one object per element its header declares, however few bytes
    follow, so such a value is refused before loadmat sees it.
    """
    try:
        variables = scipy.io.whosmat(io.BytesIO(data))
    except Exception as error:  # scipy raises many types (ValueError, TypeError, OSError, ...)
        raise DatasetError(f"{source}: not a readable MATLAB 5 .mat file ({type(error).__name__}: {error})") from error
    names = [name for name, _, _ in variables]
    for key in (IMAGE_KEY, MASK_KEY):
        if key not in names:
            raise DatasetError(f"{source}: missing the key '{key}' (found: {names})")
    for name, shape, matlab_class in variables:
        if name in (IMAGE_KEY, MASK_KEY) and matlab_class not in _NUMERIC_CLASSES:
            raise DatasetError(
                f"{source}: '{name}' is a MATLAB {matlab_class} value of shape {shape}, expected a numeric array"
            )


def write_panels(images: np.ndarray, masks: np.ndarray) -> bytes:
    """Encodes panels as a .mat file in the course format (the inverse of read_panels).

    Args:
        images: float32 (N, H, W, 3) in [0, 1].
        masks: integer (N, H, W) with values 0-10.

    Returns:
        The file content, byte-identical for identical arrays.
    """
    buffer = io.BytesIO()
    scipy.io.savemat(
        buffer,
        {
            IMAGE_KEY: np.ascontiguousarray(images.transpose(1, 2, 3, 0), dtype=np.float32),
            MASK_KEY: np.ascontiguousarray(masks.transpose(1, 2, 0), dtype=np.float32),
        },
        do_compression=True,
    )
    data = bytearray(buffer.getvalue())
    # savemat stamps the creation time into the 116-byte text header; a fixed text keeps files reproducible.
    data[:116] = _FIXED_HEADER
    return bytes(data)


_FIXED_HEADER = b"MATLAB 5.0 MAT-file, written by segnet (multi-digit MNIST)".ljust(116, b" ")
