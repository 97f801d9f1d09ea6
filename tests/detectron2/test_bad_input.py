"""The bad-input catalogue of the detectron2 adapter on the real detectron2: COCO
sets without ground truth, "no detections" during training, and every config value checked
when its component is built, naming the key."""

import json
import logging
import math
import os
import subprocess
import sys

import pytest
import torch
from detectron2.data.datasets import register_coco_instances
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from conf_plugins.calibration.stats import METRIC_NAMES
from conf_plugins.detectron2 import DetectionCalibrationEvaluator
from conf_plugins.detectron2.evaluator import EXTRA_METRIC_NAMES
from tests.fixtures import ROOT, tiny_d2_cfg, tiny_ddn_cfg

CATEGORIES = [{"id": 1, "name": "box"}]


def coco_dataset(tmp_path, name, annotations):
    """A registered COCO-format dataset of 2 images; ``annotations`` None = no such key."""
    data = {
        "images": [{"id": i, "file_name": f"{i}.png", "height": 32, "width": 32} for i in (1, 2)],
        "categories": CATEGORIES,
    }
    if annotations is not None:
        data["annotations"] = annotations
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(data))
    register_coco_instances(name, {}, str(path), str(tmp_path))
    return name


def test_coco_json_without_annotations_is_refused(tmp_path):
    name = coco_dataset(tmp_path, "bad_input_testdev", None)  # e.g. COCO test-dev
    with pytest.raises(ValueError, match="no ground truth: .* holds no 'annotations'"):
        DetectionCalibrationEvaluator(name)


def test_no_gt_box_in_any_image_is_refused(tmp_path):
    name = coco_dataset(tmp_path, "bad_input_no_boxes", [])
    with pytest.raises(ValueError, match="no \\(non-crowd\\) ground-truth box in any image"):
        DetectionCalibrationEvaluator(name)


def test_an_image_without_boxes_stays_valid(tmp_path):
    box = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "area": 100, "iscrowd": 0}
    name = coco_dataset(tmp_path, "bad_input_one_empty_image", [box])
    evaluator = DetectionCalibrationEvaluator(name, iou_thresholds=(0.5,))
    evaluator.reset()
    for image_id, boxes in ((1, [[2.0, 2.0, 12.0, 12.0]]), (2, [[0.0, 0.0, 5.0, 5.0]])):
        inst = Instances((32, 32))
        inst.pred_boxes, inst.scores = Boxes(torch.tensor(boxes)), torch.tensor([0.9])
        inst.pred_classes = torch.tensor([0])  # contiguous id of category 1
        evaluator.process([{"image_id": image_id}], [{"instances": inst}])
    results = evaluator.evaluate()["calibration"]
    assert results["count@IoU0.5"] == 2 and results["success_rate@IoU0.5"] == 0.5


def empty_outputs():
    inst = Instances((32, 32))
    inst.pred_boxes, inst.scores = Boxes(torch.zeros(0, 4)), torch.zeros(0)
    inst.pred_classes = torch.zeros(0, dtype=torch.long)
    return [{"image_id": 1}], [{"instances": inst}]


def test_no_detections_during_training_gives_nan_and_a_warning(tmp_path, caplog):
    box = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "area": 100, "iscrowd": 0}
    name = coco_dataset(tmp_path, "bad_input_empty_preds", [box])
    evaluator = DetectionCalibrationEvaluator(name, iou_thresholds=(0.5, 0.7), allow_empty=True)
    evaluator.reset()
    evaluator.process(*empty_outputs())
    with caplog.at_level(logging.WARNING):
        results = evaluator.evaluate()["calibration"]
    assert "no detections" in caplog.text
    names = METRIC_NAMES + EXTRA_METRIC_NAMES
    assert set(results) == {f"{m}@IoU{t}" for m in names for t in ("0.5", "0.7")}
    assert all(math.isnan(v) for v in results.values())
    strict = DetectionCalibrationEvaluator(name)
    strict.reset()
    strict.process(*empty_outputs())
    with pytest.raises(ValueError, match="no detections"):
        strict.evaluate()


def test_training_survives_an_evaluation_without_detections(tmp_path):
    """TEST.EVAL_PERIOD > 0 and a model that predicts nothing yet: the run goes on, saves
    its checkpoint and reports NaN calibration metrics (not rc=1 and a lost run)."""
    env = {**os.environ, "DETECTRON2_DATASETS": str(tmp_path / "datasets")}
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tools", "train_net.py"),
            "--config-file",
            os.path.join(ROOT, "configs", "demo", "teacher.yaml"),
            "SOLVER.MAX_ITER",
            "2",
            "SOLVER.IMS_PER_BATCH",
            "2",
            "SOLVER.WARMUP_ITERS",
            "1",
            "TEST.EVAL_PERIOD",
            "2",
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
            "1.0",
            "OUTPUT_DIR",
            str(out),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "model_final.pth").exists()
    assert "no detections" in result.stdout + result.stderr


# ------------------------------------------------------------- config values
@pytest.mark.parametrize(
    "key, value",
    [
        ("MATCH_IOU", 1.5),
        ("MATCH_IOU", 0.0),
        ("TEACHER_DROPOUT", 1.0),
        ("TEACHER_DROPOUT", -0.5),
        ("TEACHER_DROPOUT", 0.0),
        ("NUM_SAMPLES", 0),
        ("DISTILL_WEIGHT", -1.0),
        ("GT_WEIGHT", math.inf),
    ],
)
def test_ddn_keys_are_checked_when_built(key, value):
    cfg = tiny_ddn_cfg("")  # the bad key is reported before the (missing) teacher
    cfg.MODEL.DDN[key] = value
    with pytest.raises(ValueError, match=f"MODEL.DDN.{key} must be"):
        build_model(cfg)


def test_mc_dropout_samples_are_checked_when_built():
    cfg = tiny_d2_cfg(dropout=0.3)
    cfg.MODEL.ROI_HEADS.NAME = "MCDropoutROIHeads"
    cfg.MODEL.MC_DROPOUT.NUM_SAMPLES = 0
    with pytest.raises(ValueError, match="MODEL.MC_DROPOUT.NUM_SAMPLES must be"):
        build_model(cfg)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("NUM_BINS", 7, "TEST.CALIBRATION.NUM_BINS=7 must divide"),
        ("NUM_BINS", 0, "TEST.CALIBRATION.NUM_BINS must be an integer"),
        ("IOU_THRESHOLDS", (0.0, 0.5), "TEST.CALIBRATION.IOU_THRESHOLDS must be"),
        ("IOU_THRESHOLDS", (0.5, 1.2), "TEST.CALIBRATION.IOU_THRESHOLDS must be"),
        ("IOU_THRESHOLDS", (), "TEST.CALIBRATION.IOU_THRESHOLDS must be"),
    ],
)
def test_calibration_keys_are_checked_before_inference(tmp_path, key, value, message):
    box = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "area": 100, "iscrowd": 0}
    name = coco_dataset(tmp_path, f"bad_input_keys_{key}_{value}", [box])
    cfg = tiny_d2_cfg()
    cfg.TEST.CALIBRATION[key] = value
    with pytest.raises(ValueError, match=message):
        DetectionCalibrationEvaluator.from_config(cfg, name)
