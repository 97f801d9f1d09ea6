"""A registered mmseg visualizer: image | prediction | errors | confidence (success paper Fig. 4).

``visualizer = dict(type='ConfidenceSegVisualizer', vis_backends=[...])`` in a config makes
the stock ``SegVisualizationHook`` (``default_hooks.visualization.draw=True``, or
``tools/seg_test.py --show-dir DIR``) draw four panels per image instead of GT | prediction.
"""

import itertools

import cv2
import matplotlib
import mmcv
import numpy as np
from mmseg.registry import VISUALIZERS
from mmseg.visualization import SegLocalVisualizer

from conf_plugins.calibration import pixel_confidence

from .metric import auto_confidence

AUTO = "auto"
ERROR_RGB = (230, 25, 25)
IGNORED_RGB = (40, 40, 40)
HEADER = 18  # pixels of the title strip above each panel
_names = itertools.count()  # mmengine visualizers are named instances: one name each


def confidence_map(sample, field: str = AUTO) -> tuple:
    """``(name, (H, W) numpy confidence)`` of one predicted ``SegDataSample``.

    ``field``: a per-pixel field (``pred_confidence``, ``success_score``, ``mc_entropy`` ...),
    ``'max_softmax'`` of ``seg_logits``, or ``'auto'``: the probability of success if fitted,
    else the raw success score, else the max softmax.
    """
    if field == AUTO:
        field = auto_confidence(sample)
    if field == "max_softmax":
        if "seg_logits" not in sample:
            raise KeyError("prediction has no seg_logits for the max softmax")
        return field, pixel_confidence(sample.seg_logits.data.float())[0].cpu().numpy()
    if field not in sample:
        raise KeyError(f"prediction has no '{field}' map (it has {sorted(sample.keys())})")
    return field, getattr(sample, field).data.float().squeeze(0).cpu().numpy()


def default_palette(num_classes: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (max(num_classes, 1), 3), dtype=np.uint8)


def titled(panel: np.ndarray, title: str) -> np.ndarray:
    strip = np.full((HEADER, panel.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, title, (3, HEADER - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([strip, panel], axis=0)


@VISUALIZERS.register_module()
class ConfidenceSegVisualizer(SegLocalVisualizer):
    """``SegLocalVisualizer`` drawing, side by side: the image, the prediction (palette
    colours over the image), the errors (wrong pixels red, ignored pixels dark; only where
    ground truth exists) and the confidence map (viridis, 0 → 1).

    Args (beyond SegLocalVisualizer's):
        confidence (str): which map (see :func:`confidence_map`). Default ``'auto'``.
        ignore_index (int): label of unlabelled pixels. Default 255.
        cmap (str): matplotlib colormap of the confidence panel. Default ``'viridis'``.
    """

    def __init__(
        self,
        name: str = "visualizer",
        confidence: str = AUTO,
        ignore_index: int = 255,
        cmap: str = "viridis",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.confidence = confidence
        self.ignore_index = ignore_index
        self.cmap = matplotlib.colormaps[cmap]

    def panels(self, image: np.ndarray, sample) -> np.ndarray:
        """The four (or, without ground truth, three) titled panels as one RGB uint8 image."""
        pred = sample.pred_sem_seg.data.squeeze(0).cpu().numpy()
        if pred.shape != image.shape[:2]:
            raise ValueError(f"prediction {pred.shape} and image {image.shape[:2]} differ in size")
        palette = self.dataset_meta.get("palette") if self.dataset_meta else None
        palette = np.asarray(palette, np.uint8) if palette else default_palette(int(pred.max()) + 1)
        coloured = (0.5 * image + 0.5 * palette[np.clip(pred, 0, len(palette) - 1)]).astype(np.uint8)
        out = [titled(image, "image"), titled(coloured, "prediction")]
        if "gt_sem_seg" in sample:
            label = sample.gt_sem_seg.data.squeeze(0).cpu().numpy()
            errors = (0.35 * image.mean(axis=2, keepdims=True).repeat(3, axis=2)).astype(np.uint8)
            errors[(pred != label) & (label != self.ignore_index)] = ERROR_RGB
            errors[label == self.ignore_index] = IGNORED_RGB
            wrong = ((pred != label) & (label != self.ignore_index)).sum()
            counted = max(int((label != self.ignore_index).sum()), 1)
            out.append(titled(errors, f"errors {100 * wrong / counted:.1f}%"))
        name, conf = confidence_map(sample, self.confidence)
        heat = (self.cmap(np.clip(conf, 0, 1))[..., :3] * 255).astype(np.uint8)
        out.append(titled(heat, f"{name} (mean {conf.mean():.3f})"))
        return np.concatenate(out, axis=1)

    def add_datasample(
        self,
        name,
        image,
        data_sample=None,
        draw_gt=True,
        draw_pred=True,
        show=False,
        wait_time=0,
        out_file=None,
        step=0,
        with_labels=True,
    ):
        # override: the stock draws GT | prediction; we draw the panels above, same outputs
        if data_sample is None or "pred_sem_seg" not in data_sample:
            return super().add_datasample(
                name, image, data_sample, draw_gt, draw_pred, show, wait_time, out_file, step, with_labels
            )
        drawn = self.panels(image, data_sample)
        self.set_image(drawn)
        if show:
            self.show(drawn, win_name=name, wait_time=wait_time)
        if out_file is not None:
            mmcv.imwrite(mmcv.rgb2bgr(drawn), out_file)
        else:
            self.add_image(name, drawn, step)
        return drawn


def draw_confidence_panels(
    model, image_path: str, out_file: str, confidence: str = AUTO, label_path: str = None
) -> str:
    """Run ``model`` (``mmseg.apis.init_model``) on one image and write its panels to
    ``out_file`` (errors drawn when ``label_path`` is given). Returns ``out_file``."""
    import torch
    from mmengine.structures import PixelData
    from mmseg.apis import inference_model

    sample = inference_model(model, image_path)
    if label_path:
        label = mmcv.imread(label_path, flag="unchanged")
        sample.gt_sem_seg = PixelData(data=torch.from_numpy(label.astype(np.int64))[None])
    visualizer = ConfidenceSegVisualizer(confidence=confidence, name=f"panels_{next(_names)}")
    visualizer.dataset_meta = model.dataset_meta
    visualizer.add_datasample(
        "panels", mmcv.imread(image_path, channel_order="rgb"), sample, out_file=out_file
    )
    return out_file
