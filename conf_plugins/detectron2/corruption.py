"""Image corruptions in detectron2's data pipeline (COCO-C protocol, Michaelis et al. 2019).

``CorruptionAugmentation(name, severity)`` is a detectron2 ``Augmentation``: it corrupts the
image at its original resolution (before the test-time resize, as COCO-C does) and leaves
boxes and masks alone. Selected by ``INPUT.CORRUPTION.NAME`` / ``INPUT.CORRUPTION.SEVERITY``
for every test loader of :class:`~conf_plugins.detectron2.engine.CalibrationTrainer`.
"""

import detectron2.data.transforms as T
import numpy as np
from detectron2.data import DatasetMapper, build_detection_test_loader
from detectron2.data import detection_utils as utils

from conf_plugins.shift import check_corruption, corrupt_image


class CorruptionTransform(T.Transform):
    """Corrupt the image (RGB or BGR, uint8); coordinates and segmentation are unchanged."""

    def __init__(self, name: str, severity: int, image_format: str = "BGR"):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        bgr = self.image_format == "BGR" and img.ndim == 3
        rgb = img[:, :, ::-1] if bgr else img
        out = corrupt_image(np.ascontiguousarray(rgb), self.name, self.severity)
        return np.ascontiguousarray(out[:, :, ::-1]) if bgr else out

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation

    def inverse(self) -> T.Transform:
        return T.NoOpTransform()


class CorruptionAugmentation(T.Augmentation):
    """Corruption ``name`` at ``severity`` (1–5); the random draws are a function of the image's
    pixels, so each image is corrupted the same way in every run and worker."""

    def __init__(self, name: str, severity: int, image_format: str = "BGR"):
        super().__init__()
        name, severity = check_corruption(name, severity)
        self._init(locals())

    def get_transform(self, image) -> T.Transform:
        return CorruptionTransform(self.name, self.severity, self.image_format)


def corruption_from_config(cfg):
    """``(name, severity)`` of ``INPUT.CORRUPTION`` or None when it is off (NAME empty)."""
    name = cfg.INPUT.CORRUPTION.NAME
    if not name:
        return None
    try:
        return check_corruption(name, cfg.INPUT.CORRUPTION.SEVERITY)
    except ValueError as error:
        raise ValueError(f"INPUT.CORRUPTION: {error}") from None


def build_corrupted_test_loader(cfg, dataset_name):
    """detectron2's test loader with ``INPUT.CORRUPTION`` applied before the stock resize, or
    the stock loader when it is off."""
    corruption = corruption_from_config(cfg)
    if corruption is None:
        return build_detection_test_loader(cfg, dataset_name)
    augmentations = [
        CorruptionAugmentation(*corruption, image_format=cfg.INPUT.FORMAT),
        *utils.build_augmentation(cfg, is_train=False),
    ]
    mapper = DatasetMapper(cfg, is_train=False, augmentations=augmentations)
    return build_detection_test_loader(cfg, dataset_name, mapper=mapper)
