"""A built-in, deterministic segmentation dataset in Cityscapes layout (no downloads).

Street-like scenes of five classes (road, building, vegetation, sky, vehicle) with noisy
textures and ignore bands at object borders. Splits: ``train``, ``calib`` (held out for
temperature scaling / Bayes binning), ``val`` (in-domain) and ``val_shifted`` (off-domain:
the same layouts drawn with other colours, a different texture and blur, for the success
paper's in- vs off-domain comparison). Same seed, same files.
"""
import json
import os

import numpy as np
from mmseg.datasets import CityscapesDataset
from mmseg.registry import DATASETS
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("road", "building", "vegetation", "sky", "vehicle")
PALETTE = [[128, 64, 128], [70, 70, 70], [107, 142, 35], [70, 130, 180], [0, 0, 142]]
IGNORE_INDEX = 255
SPLITS = {"train": 0, "calib": 1, "val": 2, "val_shifted": 3}
# (in-domain colour, off-domain colour) per class
_COLOURS = {0: ((90, 90, 90), (150, 120, 90)), 1: ((150, 110, 90), (90, 110, 160)),
            2: ((60, 130, 50), (150, 150, 40)), 3: ((150, 190, 230), (230, 180, 140)),
            4: ((180, 30, 30), (40, 160, 160))}


@DATASETS.register_module()
class DemoCityscapesDataset(CityscapesDataset):
    """The demo data's five classes in the stock Cityscapes layout and file suffixes."""

    METAINFO = dict(classes=CLASSES, palette=PALETTE)


def _layout(rng, height, width):
    """Label map (H, W) uint8 of one street-like scene."""
    label = Image.new("L", (width, height), 3)  # sky
    draw = ImageDraw.Draw(label)
    horizon = int(height * rng.uniform(0.45, 0.6))
    draw.rectangle([0, horizon, width, height], fill=0)  # road
    x = 0
    while x < width:  # buildings and trees along the horizon
        w = int(rng.integers(width // 10, width // 4))
        if rng.random() < 0.65:
            top = int(horizon - rng.uniform(0.2, 0.45) * height)
            draw.rectangle([x, top, x + w, horizon], fill=1)
        else:
            r = w // 2
            cy = int(horizon - rng.uniform(0.05, 0.2) * height)
            draw.ellipse([x, cy - r, x + w, cy + r], fill=2)
        x += w
    for _ in range(rng.integers(1, 4)):  # vehicles on the road, some small and far
        w = int(rng.integers(width // 16, width // 5))
        h = int(w * rng.uniform(0.4, 0.7))
        x0 = int(rng.integers(0, width - w))
        y0 = int(rng.integers(horizon - h // 2, height - h))
        draw.rectangle([x0, y0, x0 + w, y0 + h], fill=4)
    return np.asarray(label)


def _render(rng, label, shifted: bool):
    """RGB image of a label map: per-class colour, texture noise, clutter; shifted = off-domain."""
    height, width = label.shape
    image = np.zeros((height, width, 3), dtype=np.float64)
    for cls, colours in _COLOURS.items():
        image[label == cls] = colours[1 if shifted else 0]
    image += rng.normal(0, 30, size=(height, width, 1))  # shared texture noise
    image += rng.normal(0, 12, size=image.shape)
    if shifted:  # a stripe texture the model never saw
        image += 25 * np.sin(np.arange(width) / 2.0)[None, :, None]
    image = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(3, 8)):  # clutter: strokes with colours of other classes
        colour = _COLOURS[int(rng.integers(5))][int(shifted)]
        pts = [int(rng.integers(0, width)), int(rng.integers(0, height)),
               int(rng.integers(0, width)), int(rng.integers(0, height))]
        draw.line(pts, fill=colour, width=int(rng.integers(1, 3)))
    if shifted:
        image = image.filter(ImageFilter.GaussianBlur(1.2))
    return np.asarray(image)


def _with_ignore_borders(label):
    """Borders between classes become ignore_index (as in Cityscapes' coarse boundaries)."""
    out = label.copy()
    border = np.zeros_like(label, dtype=bool)
    border[1:, :] |= label[1:, :] != label[:-1, :]
    border[:, 1:] |= label[:, 1:] != label[:, :-1]
    out[border] = IGNORE_INDEX
    return out


def generate_demo_segmentation(root: str, num_images=None, height: int = 128, width: int = 256,
                               seed: int = 0) -> str:
    """Write the demo dataset under ``root`` (Cityscapes layout); return ``root``.

    ``num_images`` maps split -> count (default train 80, calib 20, val 24, val_shifted 24).
    ``val_shifted`` renders the same layouts as ``val`` in the shifted domain. With
    ``num_images=None`` an existing dataset of any size is reused.
    """
    stamp = os.path.join(root, "generation.json")
    if num_images is None and os.path.exists(stamp):
        return root
    num_images = num_images or {"train": 80, "calib": 20, "val": 24, "val_shifted": 24}
    params = {"num_images": num_images, "height": height, "width": width, "seed": seed}
    if os.path.exists(stamp):
        with open(stamp) as f:
            if json.load(f) == params:
                return root
    for split, count in num_images.items():
        # val_shifted reuses val's layouts: the same scenes, another domain
        layout_split = "val" if split == "val_shifted" else split
        rng = np.random.default_rng([seed, SPLITS[layout_split]])
        render_rng = np.random.default_rng([seed, SPLITS[split], 1])
        for folder in ("leftImg8bit", "gtFine"):
            os.makedirs(os.path.join(root, folder, split, "demo"), exist_ok=True)
        for i in range(count):
            label = _layout(rng, height, width)
            image = _render(render_rng, label, shifted=split == "val_shifted")
            stem = os.path.join(split, "demo", f"demo_{i:05d}")
            Image.fromarray(image).save(os.path.join(root, "leftImg8bit", stem + "_leftImg8bit.png"))
            Image.fromarray(_with_ignore_borders(label)).save(
                os.path.join(root, "gtFine", stem + "_gtFine_labelTrainIds.png"))
    with open(stamp, "w") as f:
        json.dump(params, f)
    return root
