"""Decoding a PNG or JPEG file into grey pixels: luminance for colour, transparency on white paper, the camera's
orientation applied."""

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from segnet import PANEL_SIZE

FORMATS = ("PNG", "JPEG")
# 4096 x 4096: at 11 classes of float32 scores per pixel, about 1.5 GB while the image is segmented. Pillow's own
# limit (about 179 million pixels) would allow a few hundred GB of scores.
MAX_PIXELS = 4096 * 4096
# ITU-R 601-2 luma, the weights Pillow's convert("L") uses for 8-bit colour.
LUMA = np.array([0.299, 0.587, 0.114])
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")


def read_image(path: Path) -> np.ndarray:
    """The grey pixels of the PNG or JPEG file at `path`: float32 (H, W) in [0, 1], as it is displayed.

    Raises:
        ValueError: Naming `path`: not a PNG or JPEG image, a damaged one, or one over MAX_PIXELS.
    """
    with warnings.catch_warnings():
        # Pillow warns of large images as it opens them; those over MAX_PIXELS are refused before decoding.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(path, formats=FORMATS)
        except Image.UnidentifiedImageError as error:
            raise ValueError(f"{path}: not a PNG or JPEG image") from error
        except Image.DecompressionBombError as error:
            raise _too_large(path, "beyond Pillow's limit against decompression bombs") from error
        except MemoryError:
            raise
        except Exception as error:  # Pillow raises many types on damaged headers
            raise _damaged(path, error) from error
        with image:
            # The windows pad a side shorter than a panel to a panel's length: that is the area scored.
            if max(image.width, PANEL_SIZE) * max(image.height, PANEL_SIZE) > MAX_PIXELS:
                raise _too_large(path, f"{image.width}x{image.height} pixels")
            try:
                return _grey(ImageOps.exif_transpose(image))
            except MemoryError:
                raise
            except Exception as error:  # and on damaged pixel data: truncated streams, bad chunks
                raise _damaged(path, error) from error


def _damaged(path: Path, error: Exception) -> ValueError:
    return ValueError(f"{path}: a damaged image ({type(error).__name__}: {error})")


def _too_large(path: Path, size: str) -> ValueError:
    return ValueError(
        f"{path}: too large ({size}; at most {MAX_PIXELS:,} pixels); scale it down: digits about 20 pixels "
        "tall, as in MNIST, suit the model best"
    )


def _grey(image: Image.Image) -> np.ndarray:
    """Pillow's decoded `image` -> float32 (H, W) in [0, 1]."""
    if image.mode in SIXTEEN_BIT_MODES:  # 16-bit grey PNG; convert("L") would clip it to 8 bits
        return (np.asarray(image, dtype=np.float64) / 65535).clip(0, 1).astype(np.float32)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        # A transparent background is the paper the ink was drawn on: white.
        paper = Image.new("RGBA", image.size, "white")
        image = Image.alpha_composite(paper, image.convert("RGBA"))
    return np.asarray(image.convert("L"), dtype=np.float32) / np.float32(255)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Colour pixels (..., 3) float in [0, 1] -> grey float32 (...): a grey image stored in three equal channels
    gives its channel back exactly."""
    if (rgb == rgb[..., :1]).all():
        return np.ascontiguousarray(rgb[..., 0], dtype=np.float32)
    return (rgb @ LUMA).clip(0, 1).astype(np.float32)
