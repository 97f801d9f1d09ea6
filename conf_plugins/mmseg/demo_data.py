"""A built-in, deterministic segmentation dataset in Cityscapes layout (no downloads).

Street-like scenes of five classes (road, building, vegetation, sky, vehicle) with noisy
textures and ignore bands at object borders. Splits: ``train``, ``calib`` (held out for
temperature scaling / Bayes binning), ``val`` (in-domain) and ``val_shifted`` (off-domain:
the same layouts drawn with other colours, a different texture and blur, for the success
paper's in- vs off-domain comparison). Same seed, same files.

Every image also has a synthetic depth map (``depth/{split}/demo/*_depth.png``, uint16
millimetres, 0 = invalid) for the optional depth branch (Kendall et al.'s three-task case):
a flat road seen from a camera 1.5 m high, so depth falls from the horizon down the image;
vehicles at the road depth of their bottom edge (nearer than the road behind them); buildings
and trees at fixed far distances; the sky invalid. It is a function of the layout alone, so
it never changes the images or labels, and datasets written before it get it on the next call.
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
GENERATOR_VERSION = 2  # bump when the rendering changes: existing datasets are regenerated
# (in-domain colour, colour the off-domain split moves towards) per class
_COLOURS = {
    0: ((90, 90, 90), (150, 120, 90)),
    1: ((150, 110, 90), (90, 110, 160)),
    2: ((60, 130, 50), (150, 150, 40)),
    3: ((150, 190, 230), (230, 180, 140)),
    4: ((180, 30, 30), (40, 160, 160)),
}
# off-domain: colours moved this fraction of the way to the other hue, plus stripes and blur
_SHIFT_STRENGTH = 0.4
# synthetic depth: focal length x camera height (px x m), far limit, building / tree depths (m)
_FOCAL_X_HEIGHT, _MAX_DEPTH, _DEPTH_BUILDING, _DEPTH_VEGETATION = 240.0, 60.0, 45.0, 35.0


@DATASETS.register_module()
class DemoCityscapesDataset(CityscapesDataset):
    """The demo data's five classes in the stock Cityscapes layout and file suffixes."""

    METAINFO = dict(classes=CLASSES, palette=PALETTE)


@DATASETS.register_module()
class DemoCityscapesDepthDataset(DemoCityscapesDataset):
    """``DemoCityscapesDataset`` whose samples also carry ``depth_map_path`` (read by mmseg's
    ``LoadDepthAnnotation``), found under ``data_prefix['depth_map_path']`` with the image's
    relative path and ``depth_map_suffix`` in place of the image suffix."""

    def __init__(self, depth_map_suffix: str = "_depth.png", **kwargs):
        self.depth_map_suffix = depth_map_suffix
        super().__init__(**kwargs)

    def load_data_list(self):
        depth_dir = self.data_prefix.get("depth_map_path")
        if not depth_dir:
            raise ValueError("DemoCityscapesDepthDataset needs data_prefix['depth_map_path']")
        img_dir = self.data_prefix["img_path"]
        data_list = super().load_data_list()
        for info in data_list:
            stem = os.path.relpath(info["img_path"], img_dir)[: -len(self.img_suffix)]
            info["depth_map_path"] = os.path.join(depth_dir, stem + self.depth_map_suffix)
        return data_list


def _scene(rng, height, width):
    """Label map (H, W) uint8 of one street-like scene, its horizon row and vehicle boxes."""
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
    vehicles = []
    for _ in range(rng.integers(1, 4)):  # vehicles on the road, some small and far
        w = int(rng.integers(width // 16, width // 5))
        h = int(w * rng.uniform(0.4, 0.7))
        x0 = int(rng.integers(0, width - w))
        y0 = int(rng.integers(horizon - h // 2, height - h))
        draw.rectangle([x0, y0, x0 + w, y0 + h], fill=4)
        vehicles.append((x0, y0, x0 + w, y0 + h))
    return np.asarray(label), horizon, vehicles


def _depth(label, horizon, vehicles):
    """Depth map (H, W) uint16 in millimetres of a scene from :func:`_scene`; 0 = invalid."""
    height, width = label.shape
    rows = np.arange(height, dtype=np.float64)[:, None]
    ground = _FOCAL_X_HEIGHT / np.maximum(rows - horizon, 1e-6)  # flat road: f * h / (y - y_h)
    depth = np.broadcast_to(np.minimum(ground, _MAX_DEPTH), label.shape).copy()
    depth[label == 1] = _DEPTH_BUILDING
    depth[label == 2] = _DEPTH_VEGETATION
    depth[label == 3] = 0.0  # sky: no depth
    for x0, y0, x1, y1 in vehicles:  # in drawing order: later ones cover earlier ones
        depth[y0 : y1 + 1, x0 : x1 + 1] = min(_FOCAL_X_HEIGHT / max(y1 - horizon, 1), _MAX_DEPTH)
    return np.round(depth * 1000).astype(np.uint16)


def _depth_path(root, split, i):
    return os.path.join(root, "depth", split, "demo", f"demo_{i:05d}_depth.png")


def _write_missing_depth_maps(root, params):
    """Depth maps of a dataset written before they existed: replay its layouts (the layout
    random streams are independent of rendering) and write only the missing files."""
    for split, count in params["num_images"].items():
        if all(os.path.exists(_depth_path(root, split, i)) for i in range(count)):
            continue
        layout_split = "val" if split == "val_shifted" else split
        rng = np.random.default_rng([params["seed"], SPLITS[layout_split]])
        os.makedirs(os.path.dirname(_depth_path(root, split, 0)), exist_ok=True)
        for i in range(count):
            label, horizon, vehicles = _scene(rng, params["height"], params["width"])
            if not os.path.exists(_depth_path(root, split, i)):
                Image.fromarray(_depth(label, horizon, vehicles)).save(_depth_path(root, split, i))


def _colour(cls: int, shifted: bool):
    own, other = (np.asarray(c, dtype=np.float64) for c in _COLOURS[cls])
    return own + _SHIFT_STRENGTH * (other - own) if shifted else own


def _render(rng, label, shifted: bool):
    """RGB image of a label map: per-class colour, texture noise, clutter; shifted = off-domain."""
    height, width = label.shape
    image = np.zeros((height, width, 3), dtype=np.float64)
    for cls in _COLOURS:
        image[label == cls] = _colour(cls, shifted)
    image += rng.normal(0, 30, size=(height, width, 1))  # shared texture noise
    image += rng.normal(0, 12, size=image.shape)
    if shifted:  # a stripe texture the model never saw
        image += 12 * np.sin(np.arange(width) / 2.0)[None, :, None]
    image = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(3, 8)):  # clutter: strokes with colours of other classes
        colour = tuple(int(c) for c in _colour(int(rng.integers(5)), shifted))
        pts = [
            int(rng.integers(0, width)),
            int(rng.integers(0, height)),
            int(rng.integers(0, width)),
            int(rng.integers(0, height)),
        ]
        draw.line(pts, fill=colour, width=int(rng.integers(1, 3)))
    if shifted:
        image = image.filter(ImageFilter.GaussianBlur(0.8))
    return np.asarray(image)


def _with_ignore_borders(label):
    """Borders between classes become ignore_index (as in Cityscapes' coarse boundaries)."""
    out = label.copy()
    border = np.zeros_like(label, dtype=bool)
    border[1:, :] |= label[1:, :] != label[:-1, :]
    border[:, 1:] |= label[:, 1:] != label[:, :-1]
    out[border] = IGNORE_INDEX
    return out


def generate_demo_segmentation(
    root: str, num_images=None, height: int = 128, width: int = 256, seed: int = 0
) -> str:
    """Write the demo dataset under ``root`` (Cityscapes layout); return ``root``.

    ``num_images`` maps split -> count (default train 80, calib 20, val 24, val_shifted 24).
    ``val_shifted`` renders the same layouts as ``val`` in the shifted domain. With
    ``num_images=None`` an existing dataset of any size is reused (its missing depth maps
    are added).
    """
    stamp = os.path.join(root, "generation.json")
    if num_images is None and os.path.exists(stamp):
        with open(stamp) as f:
            _write_missing_depth_maps(root, json.load(f))
        return root
    num_images = num_images or {"train": 80, "calib": 20, "val": 24, "val_shifted": 24}
    params = {
        "num_images": num_images,
        "height": height,
        "width": width,
        "seed": seed,
        "version": GENERATOR_VERSION,
    }
    if os.path.exists(stamp):
        with open(stamp) as f:
            if json.load(f) == params:
                _write_missing_depth_maps(root, params)
                return root
    for split, count in num_images.items():
        # val_shifted reuses val's layouts: the same scenes, another domain
        layout_split = "val" if split == "val_shifted" else split
        rng = np.random.default_rng([seed, SPLITS[layout_split]])
        render_rng = np.random.default_rng([seed, SPLITS[split], 1])
        for folder in ("leftImg8bit", "gtFine", "depth"):
            os.makedirs(os.path.join(root, folder, split, "demo"), exist_ok=True)
        for i in range(count):
            label, horizon, vehicles = _scene(rng, height, width)
            image = _render(render_rng, label, shifted=split == "val_shifted")
            stem = os.path.join(split, "demo", f"demo_{i:05d}")
            Image.fromarray(image).save(os.path.join(root, "leftImg8bit", stem + "_leftImg8bit.png"))
            Image.fromarray(_with_ignore_borders(label)).save(
                os.path.join(root, "gtFine", stem + "_gtFine_labelTrainIds.png")
            )
            Image.fromarray(_depth(label, horizon, vehicles)).save(_depth_path(root, split, i))
    with open(stamp, "w") as f:
        json.dump(params, f)
    return root
