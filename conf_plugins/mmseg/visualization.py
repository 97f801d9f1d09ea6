"""Confidence heat-maps of mmseg predictions, like Fig. 4 of the success-prediction paper."""
import os

import mmcv
import numpy as np
from mmseg.apis import inference_model

from conf_plugins.calibration import plot_confidence_heatmap


def confidence_map(sample, field: str) -> np.ndarray:
    """(H, W) confidence of one predicted SegDataSample: a per-pixel field or max softmax."""
    if field == "max_softmax":
        return sample.seg_logits.data.softmax(dim=0).max(dim=0).values.cpu().numpy()
    if field not in sample:
        raise KeyError(f"prediction has no '{field}' map")
    return getattr(sample, field).data.squeeze(0).cpu().numpy()


def draw_confidence_heatmaps(model, image_paths, out_dir: str, field: str = "pred_confidence",
                             prefix: str = "") -> list:
    """Run ``model`` on each image and write image + ``field`` heat-map PNGs; return paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for image_path in image_paths:
        sample = inference_model(model, image_path)
        image = mmcv.imread(image_path, channel_order="rgb")
        name = os.path.splitext(os.path.basename(image_path))[0]
        out = os.path.join(out_dir, f"{prefix}{name}_{field}.png")
        paths.append(plot_confidence_heatmap(image, confidence_map(sample, field), out,
                                             title=f"{prefix.rstrip('_')} {field}".strip()))
    return paths
