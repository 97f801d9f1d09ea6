"""A built-in, deterministic detection dataset in COCO json format (no downloads).

Generated scenes of three object classes (disc, box, triangle) with varying colours and
sizes, on textured backgrounds with clutter (distractor strokes and blobs in the objects'
colours), partial occlusion and small objects, so that a detector trained on it is imperfect
and its calibration is measurable. Each object also has its instance mask (its visible
pixels, as COCO's: later objects occlude earlier ones) as COCO RLE, for Mask R-CNN
(``INPUT.MASK_FORMAT bitmask``). Same seed, same files.
"""

import json
import os

import numpy as np
import torch
from PIL import Image, ImageDraw

CLASSES = ("disc", "box", "triangle")
DEFAULT_SIZES = {"train": 200, "calib": 60, "val": 60}
SPLITS = {"train": 0, "val": 1, "calib": 2}  # split -> seed offset (calib: held out for fits)


def _draw_object(draw, cls, box, color):
    x0, y0, x1, y1 = box
    if cls == "disc":
        draw.ellipse(box, fill=color)
    elif cls == "box":
        draw.rectangle(box, fill=color)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=color)


def _scene(rng, size):
    """One image (H, W, 3 uint8) and its annotations [(class index, xyxy box, visible mask)]."""
    base = rng.integers(40, 200, size=3)
    noise = rng.normal(0, 18, size=(size, size, 3))
    image = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(2, 6)):  # clutter: strokes and blobs in object-like colours
        pts = rng.integers(0, size, size=4).tolist()
        color = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if rng.random() < 0.5:
            draw.line(pts, fill=color, width=int(rng.integers(1, 4)))
        else:
            r = int(rng.integers(2, 6))
            draw.ellipse([pts[0] - r, pts[1] - r, pts[0] + r, pts[1] + r], fill=color)
    annotations = []
    owner = Image.new("L", (size, size), 0)  # which object a pixel shows (0: none)
    for _ in range(rng.integers(1, 5)):
        cls = int(rng.integers(len(CLASSES)))
        side = (
            int(rng.integers(size // 10, size // 3))
            if rng.random() > 0.3
            else int(rng.integers(size // 20 + 2, size // 8 + 2))
        )  # ~30% small objects
        x0, y0 = (int(v) for v in rng.integers(0, size - side, size=2))
        box = [x0, y0, x0 + side, y0 + int(side * rng.uniform(0.7, 1.3))]
        box[3] = min(box[3], size - 1)
        color = tuple(int(c) for c in rng.integers(0, 256, size=3))
        _draw_object(draw, CLASSES[cls], box, color)  # later objects occlude earlier ones
        _draw_object(ImageDraw.Draw(owner), CLASSES[cls], box, len(annotations) + 1)
        annotations.append((cls, box))
    owners = np.asarray(owner)
    return np.asarray(image), [(cls, box, owners == i + 1) for i, (cls, box) in enumerate(annotations)]


def mask_rle(mask: np.ndarray) -> dict:
    """COCO's compressed RLE of a (H, W) bool mask, JSON-ready."""
    from pycocotools import mask as coco_mask

    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def generate_demo_detection(root: str, num_images=None, image_size: int = 128, seed: int = 0) -> dict:
    """Write ``root/{split}/*.png`` and ``root/annotations/instances_{split}.json``.

    ``num_images`` maps split -> count (default 200 train, 60 calib, 60 val; calib is the
    held-out split that score calibrators and the DDN knob study are fitted / chosen on).
    Returns split -> json path. Existing files with the same generation parameters are reused; with
    ``num_images=None`` an existing dataset of any size is reused.
    """
    stamp = os.path.join(root, "generation.json")
    if num_images is None and os.path.exists(stamp):
        with open(stamp) as f:
            found = json.load(f)
        num_images, image_size, seed = found["num_images"], found["image_size"], found["seed"]
    num_images = num_images or DEFAULT_SIZES
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    params = {"num_images": num_images, "image_size": image_size, "seed": seed, "masks": True}
    paths = {s: os.path.join(root, "annotations", f"instances_{s}.json") for s in num_images}
    if os.path.exists(stamp) and all(map(os.path.exists, paths.values())):
        with open(stamp) as f:
            if json.load(f) == params:
                return paths
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(CLASSES)]
    for split, count in num_images.items():
        rng = np.random.default_rng([seed, SPLITS.get(split, len(SPLITS))])
        os.makedirs(os.path.join(root, split), exist_ok=True)
        images, annotations = [], []
        for image_id in range(count):
            pixels, objects = _scene(rng, image_size)
            file_name = f"{split}/{image_id:05d}.png"
            Image.fromarray(pixels).save(os.path.join(root, file_name))
            images.append({"id": image_id, "file_name": file_name, "height": image_size, "width": image_size})
            for cls, (x0, y0, x1, y1), mask in objects:
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": cls + 1,
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "area": (x1 - x0) * (y1 - y0),
                        "iscrowd": 0,
                        "segmentation": mask_rle(mask),
                    }
                )
        with open(paths[split], "w") as f:
            json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    with open(stamp, "w") as f:
        json.dump(params, f)
    return paths


def register_demo_detection(root: str = None, prefix: str = "conf_demo_det", **kwargs):
    """Generate (if needed) and register ``{prefix}_train`` / ``_calib`` / ``_val`` in detectron2.

    Default root: ``$DETECTRON2_DATASETS/conf_demo_det`` (``./datasets`` if unset).
    """
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances

    root = root or os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), prefix)
    paths = generate_demo_detection(root, **kwargs)
    names = []
    for split, json_file in paths.items():
        name = f"{prefix}_{split}"
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            from detectron2.data import MetadataCatalog

            MetadataCatalog.remove(name)
        register_coco_instances(name, {}, json_file, root)
        names.append(name)
    return names


def random_detection_batch(num_images=2, size=64, num_classes=3, seed=0):
    """detectron2 model inputs: random uint8 images with 2 GT boxes each (tests, benches)."""
    from detectron2.structures import Boxes, Instances

    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(num_images):
        image = torch.randint(0, 255, (3, size, size), generator=g, dtype=torch.uint8)
        inst = Instances((size, size))
        inst.gt_boxes = Boxes(torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 18.0, 60.0, 58.0]]))
        inst.gt_classes = torch.randint(0, num_classes, (2,), generator=g)
        batch.append({"image": image, "height": size, "width": size, "instances": inst})
    return batch
