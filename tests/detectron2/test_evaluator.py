"""The detectron2 calibration evaluator in detectron2's own evaluation loop, and across
processes (gloo): 2 processes give the numbers of 1."""

import json
import math
import os

import pytest
import torch
from detectron2.data import DatasetCatalog, build_detection_test_loader
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators, inference_on_dataset
from detectron2.modeling import build_model
from detectron2.structures import Boxes, BoxMode, Instances

from conf_plugins.calibration import CalibrationStats
from conf_plugins.detectron2 import DetectionCalibrationEvaluator, register_demo_detection
from tests.distributed import run_in_processes
from tests.fixtures import tiny_d2_cfg


@pytest.fixture(scope="module")
def demo_val(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("demo_det"))
    register_demo_detection(root, prefix="test_demo_det", num_images={"train": 2, "val": 6}, image_size=64)
    return "test_demo_det_val"


def oracle_outputs(dataset_name, num_images=None):
    """(inputs, outputs): each GT box detected with score 0.8, plus one false box at 0.3."""
    inputs, outputs = [], []
    for record in DatasetCatalog.get(dataset_name)[:num_images]:
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in record["annotations"]]
        inst = Instances((record["height"], record["width"]))
        inst.pred_boxes = Boxes(torch.tensor(boxes + [[0.0, 0.0, 3.0, 3.0]]))
        inst.scores = torch.tensor([0.8] * len(boxes) + [0.3])
        inst.pred_classes = torch.tensor([a["category_id"] for a in record["annotations"]] + [0])
        inputs.append({"image_id": record["image_id"]})
        outputs.append({"instances": inst})
    return inputs, outputs


def test_oracle_detections_give_known_statistics(demo_val, tmp_path):
    evaluator = DetectionCalibrationEvaluator(
        demo_val, iou_thresholds=(0.5,), num_bins=10, output_dir=str(tmp_path)
    )
    evaluator.reset()
    inputs, outputs = oracle_outputs(demo_val)
    evaluator.process(inputs, outputs)
    results = evaluator.evaluate()["calibration"]
    num_gt = sum(len(r["annotations"]) for r in DatasetCatalog.get(demo_val))
    expected = CalibrationStats()
    expected.update(torch.tensor([0.8] * num_gt + [0.3] * 6), torch.tensor([True] * num_gt + [False] * 6))
    for name, value in expected.compute(num_bins=10).items():
        assert results[f"{name}@IoU0.5"] == pytest.approx(value, nan_ok=True), name
    assert results["count@IoU0.5"] == num_gt + 6
    assert results["AUROC@IoU0.5"] == pytest.approx(1.0)
    assert os.path.getsize(tmp_path / "calibration" / "reliability_iou0.5.png") > 0


def test_no_detections_is_a_clear_error(demo_val):
    evaluator = DetectionCalibrationEvaluator(demo_val)
    evaluator.reset()
    inst = Instances((64, 64))
    inst.pred_boxes, inst.scores = Boxes(torch.zeros(0, 4)), torch.zeros(0)
    inst.pred_classes = torch.zeros(0, dtype=torch.long)
    evaluator.process([{"image_id": 0}], [{"instances": inst}])
    with pytest.raises(ValueError, match="no detections"):
        evaluator.evaluate()


def test_runs_beside_coco_evaluator_in_detectron2_loop(demo_val, tmp_path):
    cfg = tiny_d2_cfg()
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # an untrained model: keep its detections
    model = build_model(cfg).eval()
    evaluators = DatasetEvaluators(
        [
            COCOEvaluator(demo_val, output_dir=str(tmp_path)),
            DetectionCalibrationEvaluator(demo_val, output_dir=str(tmp_path)),
        ]
    )
    results = inference_on_dataset(model, build_detection_test_loader(cfg, demo_val), evaluators)
    assert "AP" in results["bbox"]
    assert {"ECE@IoU0.3", "MSCE@IoU0.5", "MCE@IoU0.7", "NLL@IoU0.5"} <= set(results["calibration"])
    assert math.isfinite(results["calibration"]["ECE@IoU0.5"])


def top1_probs(classes, num_classes=3):
    """K+1 probabilities whose arg-max is each detection's class, except for the last
    detection (oracle_outputs' false box), whose arg-max is background."""
    probs = torch.full((len(classes), num_classes + 1), 0.1)
    probs[torch.arange(len(classes)), classes] = 0.7
    probs[-1, num_classes] = 0.9  # background wins: not a top-1 detection
    return probs / probs.sum(dim=1, keepdim=True)


def test_new_metrics_top1_mode_and_crowd_regions(demo_val, tmp_path):
    """Oracle detections: classwise / LaECE / D-ECE from the same detections, top-1 mode
    drops the false box (its proposal's arg-max is background), a crowd region absorbs it."""
    inputs, outputs = oracle_outputs(demo_val)
    for out in outputs:
        out["instances"].pred_class_probs = top1_probs(out["instances"].pred_classes)
    evaluator = DetectionCalibrationEvaluator(demo_val, iou_thresholds=(0.5,), output_dir=str(tmp_path))
    evaluator.reset()
    evaluator.process(inputs, outputs)
    results = evaluator.evaluate()["calibration"]
    num_gt = sum(len(r["annotations"]) for r in DatasetCatalog.get(demo_val))
    assert results["count@IoU0.5"] == num_gt + 6
    assert results["top1/count@IoU0.5"] == num_gt  # the false boxes are not top-1
    assert results["top1/ECE@IoU0.5"] == pytest.approx(0.2)  # all right at 0.8
    assert results["top1/classwise_ECE@IoU0.5"] == pytest.approx(0.2)
    assert results["top1/LaECE@IoU0.5"] == pytest.approx(0.2)  # IoU 1 with their GT
    assert results["D-ECE@IoU0.5"] >= results["ECE@IoU0.5"] - 1e-12  # finer bins: no smaller
    assert (tmp_path / "calibration" / "dece_map_iou0.5.png").stat().st_size > 0
    assert (tmp_path / "calibration" / "top1_reliability_iou0.5.png").stat().st_size > 0

    # the same false box on a crowd region of its class: ignored, as COCO does
    evaluator.reset()
    crowd = {record["image_id"]: [0.0, 0.0, 4.0, 4.0] for record in DatasetCatalog.get(demo_val)}
    for image_id, box in crowd.items():
        entry = evaluator._gt[image_id]
        entry["crowd_boxes"], entry["crowd_classes"] = (
            torch.tensor([box], dtype=torch.float64),
            torch.tensor([0]),
        )
    evaluator.process(inputs, outputs)
    results = evaluator.evaluate()["calibration"]
    assert results["count@IoU0.5"] == num_gt
    assert results["success_rate@IoU0.5"] == pytest.approx(1.0)


def test_crowd_annotations_of_a_coco_json_are_ignored_not_wrong(tmp_path):
    import json

    from detectron2.data.datasets import register_coco_instances

    coco = dict(
        images=[dict(id=1, width=64, height=64, file_name="a.jpg")],
        annotations=[
            dict(id=1, image_id=1, category_id=1, bbox=[0, 0, 20, 20], area=400, iscrowd=0),
            dict(id=2, image_id=1, category_id=1, bbox=[30, 30, 30, 30], area=900, iscrowd=1),
        ],
        categories=[dict(id=1, name="thing")],
    )
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    register_coco_instances("test_crowd_json", {}, str(tmp_path / "coco.json"), str(tmp_path))
    evaluator = DetectionCalibrationEvaluator("test_crowd_json", iou_thresholds=(0.5,))
    evaluator.reset()
    inst = Instances(
        (64, 64),
        pred_boxes=Boxes(torch.tensor([[0.0, 0, 20, 20], [35.0, 35, 50, 50], [0.0, 40, 10, 50]])),
        scores=torch.tensor([0.9, 0.8, 0.7]),
        pred_classes=torch.tensor([0, 0, 0]),
    )
    evaluator.process([{"image_id": 1}], [{"instances": inst}])
    results = evaluator.evaluate()["calibration"]
    assert results["count@IoU0.5"] == 2  # the box inside the crowd region is left out
    assert results["success_rate@IoU0.5"] == pytest.approx(0.5)


def _evaluate_on_rank(rank, world_size, dataset_root):
    register_demo_detection(
        dataset_root, prefix="test_demo_det", num_images={"train": 2, "val": 6}, image_size=64
    )
    evaluator = DetectionCalibrationEvaluator("test_demo_det_val", iou_thresholds=(0.3, 0.5))
    evaluator.reset()
    inputs, outputs = oracle_outputs("test_demo_det_val")
    # add a score spread so every bin and ranking metric is exercised; class probabilities
    # whose arg-max is the detection's class except for the false box (top-1 mode)
    for i, out in enumerate(outputs):
        inst = out["instances"]
        inst.scores = inst.scores * (0.5 + 0.08 * i)
        inst.pred_class_probs = top1_probs(inst.pred_classes)
    evaluator.process(inputs[rank::world_size], outputs[rank::world_size])
    return evaluator.evaluate()


def test_two_processes_equal_one(demo_val):
    root = os.path.dirname(DatasetCatalog.get(demo_val)[0]["file_name"]).rsplit("/val", 1)[0]
    (single,) = run_in_processes(_evaluate_on_rank, 1, root)
    double = run_in_processes(_evaluate_on_rank, 2, root)
    assert double[1] == {}  # detectron2's convention: results on the main process only
    assert single.keys() == double[0].keys()
    assert "LaECE@IoU0.5_ci_lo" in single["calibration"]  # bootstrap intervals over images too
    for k, v in single["calibration"].items():
        assert double[0]["calibration"][k] == pytest.approx(v, nan_ok=True, rel=1e-12), k


def test_bootstrap_records_are_each_images_own_statistics(demo_val, tmp_path):
    """Row i of the saved records = the statistics of image i evaluated alone; the intervals
    bracket the point values; two processes give them too (test above compares every key)."""
    inputs, outputs = oracle_outputs(demo_val)
    for i, out in enumerate(outputs):
        out["instances"].scores = out["instances"].scores * (0.5 + 0.08 * i)
    evaluator = DetectionCalibrationEvaluator(
        demo_val, iou_thresholds=(0.5,), output_dir=str(tmp_path / "all"), bootstrap=200
    )
    evaluator.reset()
    evaluator.process(inputs, outputs)
    results = evaluator.evaluate()["calibration"]
    for name in ("ECE", "MSCE", "AUROC", "LaECE", "LaACE", "D-ECE", "classwise_ECE", "LRP", "oLRP"):
        lo, hi = results[f"{name}@IoU0.5_ci_lo"], results[f"{name}@IoU0.5_ci_hi"]
        assert lo <= results[f"{name}@IoU0.5"] <= hi, name
    saved = torch.load(tmp_path / "all" / "calibration" / "records.pt", weights_only=False)
    records = saved["records"][""][0].to_dense()
    assert saved["images"] == sorted(inp["image_id"] for inp in inputs)
    for i, (inp, out) in enumerate(sorted(zip(inputs, outputs), key=lambda p: p[0]["image_id"])):
        alone = DetectionCalibrationEvaluator(
            demo_val, iou_thresholds=(0.5,), output_dir=str(tmp_path / f"img{i}"), bootstrap=0
        )
        alone.reset()
        alone.process([inp], [out])
        alone.evaluate()
        state = torch.load(tmp_path / f"img{i}" / "calibration" / "stats.pt", weights_only=True)[0.5]
        own = CalibrationStats.from_state_dict(state).as_record()
        # Σ log v of float32 confidences: the fused kernel's vector log and torch's scalar log
        # of a short tail may differ in the last float32 bit (seen on AVX2, not on AVX-512)
        assert torch.allclose(records[i, : len(own)], own, rtol=1e-6, atol=1e-12), i


def test_lrp_laace_and_lrp_optimal_thresholds(demo_val, tmp_path):
    """Oracle detections (every GT box at 0.8, IoU 1) plus one false class-0 box at 0.3 per
    image: LRP counts those false positives, oLRP drops them at class 0's LRP-optimal
    threshold (the highest that keeps the true positives), LaACE is the mean |score − IoU| per class."""
    inputs, outputs = oracle_outputs(demo_val)
    evaluator = DetectionCalibrationEvaluator(demo_val, iou_thresholds=(0.5,), output_dir=str(tmp_path))
    evaluator.reset()
    evaluator.process(inputs, outputs)
    results = evaluator.evaluate()["calibration"]
    gt = torch.cat(
        [torch.tensor([a["category_id"] for a in r["annotations"]]) for r in DatasetCatalog.get(demo_val)]
    )
    counts = torch.bincount(gt, minlength=3).tolist()
    with_gt = [c for c in range(3) if counts[c]]
    lrp = [6 / (counts[0] + 6) if c == 0 else 0.0 for c in with_gt]
    assert results["LRP@IoU0.5"] == pytest.approx(sum(lrp) / len(lrp))
    assert results["LRP_FP@IoU0.5"] == pytest.approx(
        sum(6 / (counts[0] + 6) if c == 0 else 0 for c in with_gt) / len(with_gt)
    )
    assert results["oLRP@IoU0.5"] == pytest.approx(0.0, abs=1e-12)
    assert results["oLRP_FN@IoU0.5"] == pytest.approx(0.0, abs=1e-12)
    laace = [(counts[0] * 0.2 + 6 * 0.3) / (counts[0] + 6)] + [0.2 for c in (1, 2) if counts[c]]
    assert results["LaACE@IoU0.5"] == pytest.approx(sum(laace) / len(laace))
    thresholds = json.loads((tmp_path / "calibration" / "lrp_thresholds.json").read_text())["IoU0.5"]
    by_index = list(thresholds.values())
    # the highest of equal minima: just below the true positives' 0.8 (float32 0.8 > 0.8)
    assert by_index[0]["threshold"] == pytest.approx(0.8)
    assert by_index[0]["detections"] == counts[0] + 6 and by_index[0]["gt"] == counts[0]
    for c in (1, 2):
        assert by_index[c]["threshold"] == (pytest.approx(0.8) if counts[c] else None)


def test_box_interval_coverage_of_matched_gt_boxes(demo_val):
    """Oracle detections (boxes = GT) with intervals ±2 px, except in the first image, where
    the interval misses the GT by lying 3-5 px to the right: coverage = the other images'
    share of the matched boxes; width 4 px; area = outer − inner."""
    inputs, outputs = oracle_outputs(demo_val)
    for i, out in enumerate(outputs):
        boxes = out["instances"].pred_boxes.tensor
        shift = torch.tensor([4.0, 0.0, 4.0, 0.0]) if i == 0 else torch.zeros(4)
        out["instances"].pred_boxes_inner = Boxes(boxes + torch.tensor([2.0, 2.0, -2.0, -2.0]) + shift)
        out["instances"].pred_boxes_outer = Boxes(boxes + torch.tensor([-2.0, -2.0, 2.0, 2.0]) + shift)
    evaluator = DetectionCalibrationEvaluator(demo_val, iou_thresholds=(0.5,), bootstrap=0)
    evaluator.reset()
    evaluator.process(inputs, outputs)
    results = evaluator.evaluate()["calibration"]
    first = len(DatasetCatalog.get(demo_val)[0]["annotations"])
    num_gt = sum(len(r["annotations"]) for r in DatasetCatalog.get(demo_val))
    assert results["box_matched@IoU0.5"] == num_gt  # the false boxes match nothing
    assert results["box_coverage@IoU0.5"] == pytest.approx((num_gt - first) / num_gt)
    assert results["box_interval_width@IoU0.5"] == pytest.approx(4.0)
    outer = [(b[2] - b[0] + 4) * (b[3] - b[1] + 4) for b in _gt_xyxy(demo_val)]
    inner = [max(b[2] - b[0] - 4, 0) * max(b[3] - b[1] - 4, 0) for b in _gt_xyxy(demo_val)]
    assert results["box_interval_area@IoU0.5"] == pytest.approx((sum(outer) - sum(inner)) / num_gt)


def _gt_xyxy(dataset_name):
    return [
        BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
        for r in DatasetCatalog.get(dataset_name)
        for a in r["annotations"]
    ]


def test_mask_calibration_matches_by_mask_iou_and_needs_gt_masks(demo_val, tmp_path):
    """segm/: the same detections matched by mask IoU. Oracle masks (each GT object's own
    visible pixels) are right at any threshold, as their boxes are; a mask shifted off its
    object is wrong under segm/ while its box stays right; no GT masks is an error."""
    from pycocotools import mask as coco_mask

    inputs, outputs = oracle_outputs(demo_val)
    for record, out in zip(DatasetCatalog.get(demo_val), outputs):
        inst = out["instances"]
        masks = [torch.from_numpy(coco_mask.decode(a["segmentation"])).bool() for a in record["annotations"]]
        false = torch.zeros(record["height"], record["width"], dtype=torch.bool)
        false[:3, :3] = True  # the false box's own pixels
        inst.pred_masks = torch.stack([*masks, false])
    evaluator = DetectionCalibrationEvaluator(demo_val, iou_thresholds=(0.5,), bootstrap=0, distributed=False)
    evaluator.reset()
    evaluator.process(inputs, outputs)
    results = evaluator.evaluate()["calibration"]
    annotations = [a for r in DatasetCatalog.get(demo_val) for a in r["annotations"]]
    total = len(annotations) + len(DatasetCatalog.get(demo_val))  # plus one false box per image
    assert results["segm/count@IoU0.5"] == results["count@IoU0.5"] == total
    # an oracle mask is right unless its object is hidden entirely (an empty mask has no IoU)
    visible = sum(float(coco_mask.area(a["segmentation"])) > 0 for a in annotations)
    assert results["success_rate@IoU0.5"] == pytest.approx(len(annotations) / total)
    assert results["segm/success_rate@IoU0.5"] == pytest.approx(visible / total)
    assert results["segm/LaECE@IoU0.5"] >= 0
    # a mask moved off its object: wrong under segm/, the box still right
    shifted = [{"instances": out["instances"][:1]} for out in outputs[:1]]
    shifted[0]["instances"].pred_masks = shifted[0]["instances"].pred_masks.roll(20, dims=2)
    evaluator.reset()
    evaluator.process(inputs[:1], shifted)
    one = evaluator.evaluate()["calibration"]
    assert one["success_rate@IoU0.5"] == 1.0 and one["segm/success_rate@IoU0.5"] == 0.0
    # a dataset without masks
    root = str(tmp_path / "boxes_only")
    register_demo_detection(root, prefix="boxes_only_det", num_images={"val": 2}, image_size=64)
    records = DatasetCatalog.get("boxes_only_det_val")
    for record in records:
        for a in record["annotations"]:
            a.pop("segmentation")
    DatasetCatalog.remove("boxes_only_det_val")
    DatasetCatalog.register("boxes_only_det_val", lambda: records)
    plain = DetectionCalibrationEvaluator("boxes_only_det_val", (0.5,), bootstrap=0, distributed=False)
    plain.reset()
    inst = Instances(
        (64, 64), pred_boxes=Boxes(torch.tensor([[1.0, 1.0, 9.0, 9.0]])), scores=torch.tensor([0.5])
    )
    inst.pred_classes, inst.pred_masks = torch.tensor([0]), torch.ones(1, 64, 64, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"no instance masks .* \(segm/\) needs GT masks"):
        plain.process([{"image_id": records[0]["image_id"]}], [{"instances": inst}])
