"""The one reader of image and label files: training, evaluation, pseudo-labels and prediction all read
through here, so one file gives the same pixels on every path. Errors name the file and what was expected.

Images (``format`` given, e.g. ``"RGB"``), as they are displayed: EXIF orientation applied; transparency
(RGBA, LA, PA, a palette with a transparent colour) composited over white; 8-bit grayscale / palette / RGB /
CMYK converted by detectron2's ``convert_PIL_to_numpy`` (grayscale replicated to 3 channels). 16-bit
files are reduced to 8 bits by their high byte -- what Pillow itself does for 16-bit RGB PNGs -- so a
16-bit grayscale PNG is not clipped to white by a plain ``convert("RGB")``. 32-bit integer and float
images are rejected. Label maps (``format=None``, :func:`read_label_file`) are returned as stored (8- or
16-bit integers, one channel); float label maps are rejected.

Needs only NumPy and Pillow (detectron2's ``PathManager`` is used when present): the ONNX prediction path
reads images with it without detectron2. :func:`apply_exif_orientation` and :func:`pil_to_numpy` give what
detectron2's ``_apply_exif_orientation`` / ``convert_PIL_to_numpy`` give (tested equal).
"""
import logging

import numpy as np
from PIL import Image

try:  # detectron2's path handlers (manifold://, http://, ...) when it is installed; plain files otherwise
    from detectron2.utils.file_io import PathManager

    _open = PathManager.open
except ImportError:  # the ONNX deployment path runs without detectron2
    _open = open

__all__ = ["read_image_file", "read_label_file", "ImageReadError", "IMAGE_EXTENSIONS", "apply_exif_orientation", "pil_to_numpy"]

# File extensions taken as images when listing folders (datasets, prediction inputs).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pnm")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")

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


_EXIF_TRANSPOSE = {2: Image.FLIP_LEFT_RIGHT, 3: Image.ROTATE_180, 4: Image.FLIP_TOP_BOTTOM, 5: Image.TRANSPOSE, 6: Image.ROTATE_270, 7: Image.TRANSVERSE, 8: Image.ROTATE_90}


def apply_exif_orientation(image):
    """The PIL image as displayed: its EXIF orientation (tag 0x0112) applied; unreadable EXIF = as stored."""
    method = _EXIF_TRANSPOSE.get(_orientation(image))
    return image.transpose(method) if method is not None else image


def pil_to_numpy(image, format=None) -> np.ndarray:
    """PIL image -> array in ``format``: "RGB" / "BGR" (H, W, 3), "L" (H, W, 1), None = as stored."""
    if format is not None:
        image = image.convert("RGB" if format == "BGR" else format)
    array = np.asarray(image)
    if format == "L":
        return array[:, :, None]
    if format == "BGR":
        return array[:, :, ::-1]
    return array


def _over_white(image):
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


def read_image_file(path, format=None, *, what="image", info=None):
    """Like ``detectron2.data.detection_utils.read_image`` (EXIF orientation applied), with the module's
    rules and clear errors. ``info``: a dict to fill with ``mode``, ``size`` (W, H as stored),
    ``exif_rotated`` and, for multi-frame files (first frame read), ``frames``.

    Raises ``FileNotFoundError`` (missing file) or :class:`ImageReadError` (an ``OSError``: truncated /
    corrupt file, unsupported mode), both naming ``what`` and the path.
    """
    if format not in (None, "RGB", "BGR", "L"):
        raise ValueError(f"image format {format!r} (INPUT.FORMAT) is not supported: expected RGB, BGR or L")
    try:
        with _open(path, "rb") as f:
            image = Image.open(f)
            mode, file_format = image.mode, image.format
            if info is not None:
                info.update(mode=mode, size=list(image.size), exif_rotated=_orientation(image) not in (None, 1))
                if getattr(image, "n_frames", 1) > 1:
                    info["frames"] = image.n_frames
            if mode == "F":
                if format is not None:
                    raise ImageReadError(f"{what} file '{path}' has mode 'F' (32-bit float); expected an 8- or 16-bit grayscale, RGB or RGBA image")
                raise ImageReadError(f"{what} file '{path}' is a float image (mode 'F'); expected an integer label map (8- or 16-bit PNG)")
            image = apply_exif_orientation(image)  # first: the conversions below drop EXIF
            if format is not None:
                if mode in _16BIT_MODES or (mode == "I" and file_format == "PNG"):  # PNG stores at most 16 bits
                    image = _to_8bit(image, path)
                elif mode == "I":
                    raise ImageReadError(f"{what} file '{path}' has mode 'I' (32-bit integer); expected an 8- or 16-bit grayscale, RGB or RGBA image")
                elif mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
                    image = _over_white(image)
            return pil_to_numpy(image, format)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} file '{path}' does not exist") from None
    except ImageReadError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"{what} file '{path}' cannot be decoded ({type(e).__name__}: {e}); expected a complete image file (truncated or corrupt?)") from e


def _orientation(image):
    if not hasattr(image, "getexif"):
        return 1
    try:
        return image.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001  (malformed EXIF: the pixels are used as stored)
        return 1


def read_label_file(path, *, what="label"):
    """A label map of class ids (one channel, 8- or 16-bit) as (H, W) int64; errors name the file."""
    label = read_image_file(path, what=what)
    if label.ndim != 2:
        raise ValueError(f"{path}: expected a single-channel label PNG (H, W) of class ids ({what} file), got shape {label.shape}")
    return label.astype(np.int64)
