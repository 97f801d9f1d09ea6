"""Detections drawn coloured by their (calibrated) confidence, with their uncertainty fields."""

import math

import matplotlib
import numpy as np
from detectron2.utils.visualizer import VisImage
from matplotlib.patches import PathPatch, Rectangle
from matplotlib.path import Path

# Per-detection uncertainty fields of MCDropoutROIHeads (MODEL.MC_DROPOUT.OUTPUT_UNCERTAINTY):
# scalar fields and their short name in a label, and the (4,) XYXY box std in input pixels.
UNCERTAINTY_LABELS = {"pred_entropy": "H", "pred_mutual_info": "MI"}
BOX_STD_FIELD = "pred_box_std"
UNCERTAINTY_FIELDS = (*UNCERTAINTY_LABELS, BOX_STD_FIELD)
MIN_SHORT_SIDE = 512  # default upscaling: the drawing's short side is at least this (pixels)


def score_colour(score: float, cmap=matplotlib.colormaps["viridis"]) -> tuple:
    """RGB in [0, 1] of a confidence in [0, 1] (viridis: dark = unconfident, yellow = confident)."""
    return tuple(float(c) for c in cmap(float(np.clip(score, 0.0, 1.0)))[:3])


def default_scale(height: int, width: int, min_short_side: int = MIN_SHORT_SIDE) -> int:
    """The smallest integer upscaling whose short side is at least ``min_short_side`` (or 1)."""
    return max(1, math.ceil(min_short_side / max(1, min(height, width))))


def detection_label(instances, i: int, classes=(), score_field: str = "scores") -> str:
    """``class score`` of detection ``i`` plus the :data:`UNCERTAINTY_FIELDS` it carries, e.g.
    ``cat 0.87 H0.31 MI0.05 σ1.2`` (σ: mean std of the box's XYXY coordinates, in pixels)."""
    cls = int(instances.pred_classes[i])
    text = f"{classes[cls] if cls < len(classes) else cls} {float(instances.get(score_field)[i]):.2f}"
    for field, short in UNCERTAINTY_LABELS.items():
        if instances.has(field):
            text += f" {short}{float(instances.get(field)[i]):.2f}"
    if instances.has(BOX_STD_FIELD):
        text += f" σ{float(instances.get(BOX_STD_FIELD)[i].float().mean()):.1f}"
    return text


def _draw_box_std_band(ax, box, std, colour):
    """A translucent band from the box shrunk by its XYXY std to the box grown by it (±1σ)."""
    x0, y0, x1, y1 = box
    s0, s1, s2, s3 = (float(s) for s in std)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    outer = [(x0 - s0, y0 - s1), (x1 + s2, y0 - s1), (x1 + s2, y1 + s3), (x0 - s0, y1 + s3)]
    ix0, ix1 = min(x0 + s0, cx), max(x1 - s2, cx)
    iy0, iy1 = min(y0 + s1, cy), max(y1 - s3, cy)
    inner = [(ix0, iy0), (ix0, iy1), (ix1, iy1), (ix1, iy0)]  # opposite winding: a hole
    codes = [Path.MOVETO, Path.LINETO, Path.LINETO, Path.LINETO, Path.CLOSEPOLY]
    path = Path(outer + outer[:1] + inner + inner[:1], codes + codes)
    ax.add_patch(PathPatch(path, facecolor=colour, edgecolor="none", alpha=0.25))


def _draw_label(ax, text, box, colour, image_size, scale, font_px, points_per_px):
    """``text`` on a ``colour`` background above the box, or inside its top when the box
    touches the image's top; shifted left to stay within the image."""
    height, width = image_size
    x0, y0 = box[0], box[1]
    line_height = 1.5 * font_px / scale  # in input pixels, with the background's padding
    text_width = 0.62 * font_px * len(text) / scale
    x = max(0.0, min(x0, width - text_width))
    above = y0 >= line_height
    luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    ax.text(
        x,
        y0,
        text,
        fontsize=font_px * points_per_px,
        family="sans-serif",
        color="black" if luminance > 0.5 else "white",
        verticalalignment="bottom" if above else "top",
        horizontalalignment="left",
        bbox={"boxstyle": "square,pad=0.2", "facecolor": colour, "edgecolor": "none", "alpha": 0.9},
        zorder=3,
    )


def draw_detections(
    image_rgb: np.ndarray,
    instances,
    metadata=None,
    min_score: float = 0.0,
    score_field: str = "scores",
    scale: float = None,
    font_size: float = None,
    return_labels: bool = False,
):
    """``image_rgb`` (H, W, 3 uint8) upscaled ``scale`` times (default :func:`default_scale`,
    nearest neighbour) with each detection's box coloured by ``score_field`` and labelled by
    :func:`detection_label` above it; a detection with a box std also gets a ±1σ band.

    Detections below ``min_score`` are left out; lowest scores are drawn first so confident
    boxes stay on top. ``font_size`` is in output pixels (default: 1/40 of the short side, at
    least 12). Returns the drawn RGB image (H * scale, W * scale, 3), and with
    ``return_labels`` also ``{detection index: label drawn}``.
    """
    instances = instances.to("cpu")
    if not instances.has(score_field):
        raise KeyError(
            f"the detections have no '{score_field}' field (they have {sorted(instances.get_fields())})"
        )
    classes = (metadata.get("thing_classes", None) if metadata is not None else None) or []
    height, width = image_rgb.shape[:2]
    scale = default_scale(height, width) if scale is None else scale
    output = VisImage(np.asarray(image_rgb).clip(0, 255).astype(np.uint8), scale=scale)
    points_per_px = 72.0 / output.dpi  # matplotlib sizes are in points
    font_px = font_size or max(12.0, min(height, width) * scale / 40)
    line_px = max(2.0, font_px / 6)
    scores = instances.get(score_field)
    labels = {}
    for i in scores.argsort().tolist():
        score = float(scores[i])
        if score < min_score:
            continue
        box = instances.pred_boxes.tensor[i].tolist()
        colour = score_colour(score)
        if instances.has(BOX_STD_FIELD):
            _draw_box_std_band(output.ax, box, instances.get(BOX_STD_FIELD)[i], colour)
        output.ax.add_patch(
            Rectangle(
                (box[0], box[1]),
                box[2] - box[0],
                box[3] - box[1],
                fill=False,
                edgecolor=colour,
                linewidth=line_px * points_per_px,
                zorder=2,
            )
        )
        labels[i] = detection_label(instances, i, classes, score_field)
        _draw_label(output.ax, labels[i], box, colour, (height, width), scale, font_px, points_per_px)
    output.ax.set_xlim(0, width)  # bands past the image's edges must not zoom it out
    output.ax.set_ylim(height, 0)
    drawn = output.get_image()
    return (drawn, labels) if return_labels else drawn
