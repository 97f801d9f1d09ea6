"""Image corruptions in mmseg's pipeline (Cityscapes-C protocol, Michaelis et al. 2019).

``ImageCorruption(corruption='fog', severity=3)`` goes right after ``LoadImageFromFile`` in a
test pipeline (:func:`with_corruption` inserts it into a config's pipeline). The random draws
are a function of the image's file name, so every run and worker corrupts an image the same way.
"""

import os

import numpy as np
from mmcv.transforms import BaseTransform
from mmseg.registry import TRANSFORMS

from conf_plugins.shift import check_corruption, corrupt_image


@TRANSFORMS.register_module()
class ImageCorruption(BaseTransform):
    """Corrupt ``results['img']`` (BGR uint8, as ``LoadImageFromFile`` gives it)."""

    def __init__(self, corruption: str, severity: int):
        self.corruption, self.severity = check_corruption(corruption, severity)

    def transform(self, results: dict) -> dict:
        img = results["img"]
        key = os.path.basename(results.get("img_path") or "") or None
        rgb = np.ascontiguousarray(img[:, :, ::-1]) if img.ndim == 3 else img
        out = corrupt_image(rgb, self.corruption, self.severity, key=key)
        results["img"] = np.ascontiguousarray(out[:, :, ::-1])
        return results

    def __repr__(self) -> str:
        return f"{type(self).__name__}(corruption={self.corruption!r}, severity={self.severity})"


def with_corruption(pipeline, corruption: str, severity: int) -> list:
    """A copy of ``pipeline`` with :class:`ImageCorruption` right after ``LoadImageFromFile``."""
    corruption, severity = check_corruption(corruption, severity)
    pipeline = [dict(step) for step in pipeline]
    loads = [i for i, step in enumerate(pipeline) if step.get("type") == "LoadImageFromFile"]
    if not loads:
        raise ValueError("the pipeline has no LoadImageFromFile step to corrupt the image after")
    pipeline.insert(loads[0] + 1, dict(type="ImageCorruption", corruption=corruption, severity=severity))
    return pipeline
