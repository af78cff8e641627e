"""Photometric augmentation: SSD-style colour jitter as a detectron2 Augmentation (image only)."""
import cv2
import numpy as np
from detectron2.data import transforms as T
from fvcore.transforms.transform import NoOpTransform, Transform

__all__ = ["ColorAugSSD", "ColorJitterTransform"]


class ColorJitterTransform(Transform):
    """Apply fixed brightness delta, contrast factor, saturation factor and hue delta (each optional) to
    an (H, W, 3) uint8 image; labels and coordinates are unchanged."""

    def __init__(self, img_format: str, brightness=None, contrast=None, saturation=None, hue=None, contrast_first=True):
        super().__init__()
        if img_format not in ("RGB", "BGR"):
            raise ValueError(f"ColorJitterTransform: INPUT.FORMAT must be 'RGB' or 'BGR', got {img_format!r}")
        self._set_attributes(locals())

    def apply_image(self, img):
        img = img.astype(np.float32)
        if self.brightness is not None:
            img = img + self.brightness
        if self.contrast_first and self.contrast is not None:
            img = img * self.contrast
        if self.saturation is not None or self.hue is not None:
            img = np.clip(img, 0, 255).astype(np.uint8)
            rgb = img if self.img_format == "RGB" else img[..., ::-1]
            hsv = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2HSV).astype(np.int32)
            if self.hue is not None:
                hsv[..., 0] = (hsv[..., 0] + self.hue) % 180
            if self.saturation is not None:
                hsv[..., 1] = np.clip(hsv[..., 1] * self.saturation, 0, 255)
            rgb = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
            img = (rgb if self.img_format == "RGB" else rgb[..., ::-1]).astype(np.float32)
        if not self.contrast_first and self.contrast is not None:
            img = img * self.contrast
        return np.clip(img, 0, 255).astype(np.uint8)

    def apply_coords(self, coords):
        return coords

    def apply_segmentation(self, segmentation):
        return segmentation

    def inverse(self):
        return NoOpTransform()


class ColorAugSSD(T.Augmentation):
    """SSD's photometric distortion: each of brightness (+-32), contrast (x[0.5, 1.5]), saturation
    (x[0.5, 1.5]) and hue (+-18 degrees of OpenCV's 180) applied with probability 0.5; contrast before
    or after the HSV step at random."""

    def __init__(self, img_format: str, brightness_delta=32, contrast_range=(0.5, 1.5), saturation_range=(0.5, 1.5), hue_delta=18):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        rand = np.random.rand(5)
        return ColorJitterTransform(
            self.img_format,
            brightness=np.random.uniform(-self.brightness_delta, self.brightness_delta) if rand[0] < 0.5 else None,
            contrast=np.random.uniform(*self.contrast_range) if rand[1] < 0.5 else None,
            saturation=np.random.uniform(*self.saturation_range) if rand[2] < 0.5 else None,
            hue=int(np.random.randint(-self.hue_delta, self.hue_delta + 1)) if rand[3] < 0.5 else None,
            contrast_first=bool(rand[4] < 0.5),
        )
