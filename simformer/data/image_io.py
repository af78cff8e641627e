"""Read image / label files with errors that name the file and say what was expected.

Image modes (``format`` given, e.g. ``"RGB"``): 8-bit grayscale / palette / RGB / RGBA / CMYK files
are converted by detectron2's ``convert_PIL_to_numpy`` (grayscale replicated to 3 channels, alpha
dropped). 16-bit files are reduced to 8 bits by their high byte -- what Pillow itself does for 16-bit
RGB PNGs -- so a 16-bit grayscale PNG is not clipped to white by a plain ``convert("RGB")``. 32-bit
integer and float images are rejected. Label maps (``format=None``) are returned as stored (8- or
16-bit integers); float label maps are rejected.
"""
import logging

import numpy as np
from detectron2.data import detection_utils as utils
from detectron2.utils.file_io import PathManager
from PIL import Image

__all__ = ["read_image_file", "ImageReadError"]

logger = logging.getLogger(__name__)

_16BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_warned_16bit = False


class ImageReadError(OSError):
    """An image / label file that exists but cannot be decoded (truncated, corrupt, unsupported mode)."""


def _to_8bit(image, path):
    """16-bit grayscale PIL image -> 8-bit ("L") by the high byte."""
    global _warned_16bit
    if not _warned_16bit:
        logger.warning(f"{path}: 16-bit image reduced to 8 bits (high byte); further 16-bit images are converted silently")
        _warned_16bit = True
    arr = np.asarray(image).astype(np.uint32)
    return Image.fromarray((arr >> 8).clip(0, 255).astype(np.uint8), mode="L")


def read_image_file(path, format=None, *, what="image"):
    """Like ``detectron2.data.detection_utils.read_image`` (EXIF orientation applied), with clear errors.

    Raises ``FileNotFoundError`` (missing file) or :class:`ImageReadError` (an ``OSError``: truncated /
    corrupt file, unsupported mode), both naming ``what`` and the path.
    """
    try:
        with PathManager.open(path, "rb") as f:
            image = Image.open(f)
            mode = image.mode
            if format is not None:
                if mode in _16BIT_MODES or (mode == "I" and image.format == "PNG"):  # PNG stores at most 16 bits
                    image = _to_8bit(image, path)
                elif mode in ("I", "F"):
                    raise ImageReadError(
                        f"{what} file '{path}' has mode {mode!r} (32-bit {'float' if mode == 'F' else 'integer'}); "
                        "expected an 8- or 16-bit grayscale, RGB or RGBA image"
                    )
            elif mode == "F":
                raise ImageReadError(f"{what} file '{path}' is a float image (mode 'F'); expected an integer label map (8- or 16-bit PNG)")
            image = utils._apply_exif_orientation(image)
            return utils.convert_PIL_to_numpy(image, format)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} file '{path}' does not exist") from None
    except ImageReadError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"{what} file '{path}' cannot be decoded ({type(e).__name__}: {e}); expected a complete image file (truncated or corrupt?)") from e
