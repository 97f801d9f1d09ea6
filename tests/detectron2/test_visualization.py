"""Detections coloured by confidence: the drawing function on real Instances, and
tools/visualize_detections.py on a user's COCO data with a real (untrained) detector."""
import os

import numpy as np
import pytest
import torch
from detectron2.structures import Boxes, Instances

from conf_plugins.detectron2.visualization import draw_detections, score_colour
from tests.fixtures import ROOT, load_tool


def test_boxes_take_the_colour_of_their_score():
    image = np.zeros((64, 64, 3), np.uint8)
    inst = Instances((64, 64))
    inst.pred_boxes = Boxes(torch.tensor([[5.0, 5.0, 30.0, 30.0], [34.0, 34.0, 60.0, 60.0]]))
    inst.scores = torch.tensor([0.95, 0.1])
    inst.pred_classes = torch.tensor([0, 1])
    drawn = draw_detections(image, inst)
    assert drawn.shape == (64, 64, 3) and drawn.any()
    for score, box in ((0.1, (34, 34, 60, 60)), (0.95, (5, 5, 30, 30))):
        colour = np.array(score_colour(score)) * 255
        near = np.abs(drawn.astype(float) - colour).max(axis=2) < 40
        x0, y0, x1, y1 = box  # the box's outline has its score's colour
        assert near[y0 + 8:y1 - 2, x0 - 1:x0 + 2].any() and near[y0 + 8:y1 - 2, x1 - 2:x1 + 1].any()
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
    common = ["--coco", "vis_mine_val", paths["val"], str(tmp_path / "mine"), "DATASETS.TRAIN",
              "('vis_mine_val',)", "DATASETS.TEST", "('vis_mine_val',)"]
    cfg = setup(argument_parser().parse_args(["--config-file", config, *common,
                                              "OUTPUT_DIR", str(tmp_path / "o")]))
    DetectionCheckpointer(build_model(cfg), save_dir=str(tmp_path)).save("untrained")
    from detectron2.data import DatasetCatalog, MetadataCatalog
    DatasetCatalog.remove("vis_mine_val")  # the tool registers it again from --coco
    MetadataCatalog.remove("vis_mine_val")
    written = load_tool("visualize_detections").main(
        ["--config-file", config, "--dataset", "vis_mine_val", "--num-images", "2",
         "--output", str(tmp_path / "vis"), *common, "MODEL.WEIGHTS",
         str(tmp_path / "untrained.pth"), "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"])
    assert len(written) == 2 and all(os.path.getsize(p) > 0 for p in written)
