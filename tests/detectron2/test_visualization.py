"""Detections coloured by confidence: the drawing function on real Instances and on a real
MC-dropout detector's uncertainty fields, and tools/visualize_detections.py on a user's COCO
data with a real (untrained) detector."""

import os

import numpy as np
import pytest
import torch
from detectron2.structures import Boxes, Instances

from conf_plugins.detectron2.visualization import (
    UNCERTAINTY_FIELDS,
    default_scale,
    draw_detections,
    score_colour,
)
from tests.fixtures import ROOT, d2_batch, load_tool, tiny_d2_cfg


def test_boxes_take_the_colour_of_their_score():
    image = np.zeros((64, 64, 3), np.uint8)
    inst = Instances((64, 64))
    inst.pred_boxes = Boxes(torch.tensor([[5.0, 5.0, 30.0, 30.0], [34.0, 34.0, 60.0, 60.0]]))
    inst.scores = torch.tensor([0.95, 0.1])
    inst.pred_classes = torch.tensor([0, 1])
    drawn, labels = draw_detections(image, inst, return_labels=True)
    assert default_scale(64, 64) == 8 and default_scale(800, 1333) == 1
    assert drawn.shape == (512, 512, 3) and drawn.any()  # upscaled: short side >= 512
    assert labels == {1: "1 0.10", 0: "0 0.95"}
    for score, box in ((0.1, (34, 34, 60, 60)), (0.95, (5, 5, 30, 30))):
        colour = np.array(score_colour(score)) * 255
        near = np.abs(drawn.astype(float) - colour).max(axis=2) < 40
        x0, y0, x1, y1 = (8 * c for c in box)  # the box's outline has its score's colour
        assert near[y0 + 8 : y1 - 8, x0 - 2 : x0 + 3].any() and near[y0 + 8 : y1 - 8, x1 - 2 : x1 + 3].any()
    assert draw_detections(image, inst, scale=1).shape == (64, 64, 3)
    assert not draw_detections(image, inst, min_score=0.99).any()  # nothing drawn
    with pytest.raises(KeyError, match="no 'calibrated_scores' field"):
        draw_detections(image, inst, score_field="calibrated_scores")


def test_tool_draws_any_registered_dataset(tmp_path, monkeypatch):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from conf_plugins.detectron2 import generate_demo_detection
    from conf_plugins.detectron2.engine import argument_parser, setup

    paths = generate_demo_detection(str(tmp_path / "mine"), {"val": 2}, image_size=64)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))
    config = os.path.join(ROOT, "configs", "demo", "teacher.yaml")
    common = [
        "--coco",
        "vis_mine_val",
        paths["val"],
        str(tmp_path / "mine"),
        "DATASETS.TRAIN",
        "('vis_mine_val',)",
        "DATASETS.TEST",
        "('vis_mine_val',)",
    ]
    cfg = setup(
        argument_parser().parse_args(["--config-file", config, *common, "OUTPUT_DIR", str(tmp_path / "o")])
    )
    DetectionCheckpointer(build_model(cfg), save_dir=str(tmp_path)).save("untrained")
    from detectron2.data import DatasetCatalog, MetadataCatalog

    DatasetCatalog.remove("vis_mine_val")  # the tool registers it again from --coco
    MetadataCatalog.remove("vis_mine_val")
    written = load_tool("visualize_detections").main(
        [
            "--config-file",
            config,
            "--dataset",
            "vis_mine_val",
            "--num-images",
            "2",
            "--output",
            str(tmp_path / "vis"),
            *common,
            "MODEL.WEIGHTS",
            str(tmp_path / "untrained.pth"),
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
            "0.0",
        ]
    )
    assert len(written) == 2 and all(os.path.getsize(p) > 0 for p in written)
    from PIL import Image

    assert all(Image.open(p).size == (512, 512) for p in written)  # 64 px images, upscaled


def test_mc_dropout_uncertainty_is_drawn():
    """A real MC-dropout detector's entropy, mutual information and box std reach the labels."""
    from detectron2.modeling import build_model

    cfg = tiny_d2_cfg(dropout=0.3)
    cfg.MODEL.ROI_HEADS.NAME = "MCDropoutROIHeads"
    cfg.MODEL.MC_DROPOUT.NUM_SAMPLES = 4
    cfg.MODEL.MC_DROPOUT.OUTPUT_UNCERTAINTY = True
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    batch = d2_batch(num_images=1)
    with torch.no_grad():
        inst = model(batch)[0]["instances"]
    assert len(inst) > 0 and set(UNCERTAINTY_FIELDS) <= set(inst.get_fields())
    image = batch[0]["image"].permute(1, 2, 0).numpy()[:, :, ::-1]  # BGR -> RGB
    drawn, labels = draw_detections(image, inst, return_labels=True)
    assert drawn.shape == (512, 512, 3)
    assert sorted(labels) == list(range(len(inst)))
    std = inst.pred_box_std.mean(dim=1)
    assert (std > 0).any()
    for i, text in labels.items():
        assert text == (
            f"{int(inst.pred_classes[i])} {float(inst.scores[i]):.2f} "
            f"H{float(inst.pred_entropy[i]):.2f} MI{float(inst.pred_mutual_info[i]):.2f} "
            f"σ{float(std[i]):.1f}"
        )
