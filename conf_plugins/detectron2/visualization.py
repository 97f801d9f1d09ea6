"""Detections drawn coloured by their (calibrated) confidence, with their uncertainty fields."""
import matplotlib
import numpy as np
from detectron2.utils.visualizer import Visualizer

# Instances fields written beside the score when a head provides them (MC dropout, DDN, ...)
UNCERTAINTY_FIELDS = ("entropy", "mutual_information", "box_std")


def score_colour(score: float, cmap=matplotlib.colormaps["viridis"]) -> tuple:
    """RGB in [0, 1] of a confidence in [0, 1] (viridis: dark = unconfident, yellow = confident)."""
    return tuple(float(c) for c in cmap(float(np.clip(score, 0.0, 1.0)))[:3])


def draw_detections(image_rgb: np.ndarray, instances, metadata=None, min_score: float = 0.0,
                    score_field: str = "scores") -> np.ndarray:
    """``image_rgb`` (H, W, 3 uint8) with each detection's box coloured by ``score_field`` and
    labelled ``class score`` plus any :data:`UNCERTAINTY_FIELDS` the instances carry.

    Detections below ``min_score`` are left out; lowest scores are drawn first so confident
    boxes stay on top. Returns the drawn RGB image.
    """
    instances = instances.to("cpu")
    if not instances.has(score_field):
        raise KeyError(f"the detections have no '{score_field}' field "
                       f"(they have {sorted(instances.get_fields())})")
    classes = (metadata.get("thing_classes", None) if metadata is not None else None) or []
    scores = instances.get(score_field)
    visualizer = Visualizer(image_rgb, metadata)
    for i in scores.argsort().tolist():
        score = float(scores[i])
        if score < min_score:
            continue
        box = instances.pred_boxes.tensor[i].tolist()
        colour = score_colour(score)
        cls = int(instances.pred_classes[i])
        text = f"{classes[cls] if cls < len(classes) else cls} {score:.2f}"
        for field in UNCERTAINTY_FIELDS:
            if instances.has(field):
                value = instances.get(field)[i]
                text += f" {field[:3]}={float(value.float().mean()):.2f}"
        visualizer.draw_box(box, alpha=1.0, edge_color=colour)
        visualizer.draw_text(text, (box[0], box[1]), color=colour, horizontal_alignment="left",
                             font_size=8)
    return visualizer.get_output().get_image()
