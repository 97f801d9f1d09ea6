"""The calibration stage after detectron2's post-processing: output coordinates at a resized
input, and the model-zoo families (Faster R-CNN, RetinaNet, Cascade Mask R-CNN) fitted,
deployed, reloaded and refused when stale, on the real detectron2."""

import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import build_detection_test_loader
from detectron2.evaluation import inference_on_dataset

from conf_plugins.calibration.logistic import logit
from conf_plugins.detectron2 import DetectionCalibrationEvaluator, register_demo_detection
from conf_plugins.detectron2.calibration_stage import build_calibrated_model
from conf_plugins.detectron2.score_calibration import fit_calibration_stage
from tests.fixtures import d2_batch, detections_of, tiny_d2_cfg, tiny_zoo_cfg

PREFIX = "stage_demo"


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    """(calib, val) of small generated demo data at 64 px."""
    root = tmp_path_factory.mktemp("stage_demo")
    register_demo_detection(str(root), PREFIX, num_images={"calib": 40, "val": 40}, image_size=64)
    return f"{PREFIX}_calib", f"{PREFIX}_val"


def resized(batch, size):
    """The batch's images resized to ``size`` px (the network input), their own size kept
    as the output size: what the test loader does at ``INPUT.MIN_SIZE_TEST`` = ``size``."""
    out = []
    for inp in batch:
        image = F.interpolate(inp["image"][None].float(), size=(size, size), mode="bilinear")[0]
        out.append({**inp, "image": image.round().clamp(0, 255).to(torch.uint8)})
    return out


def fitted_model(cfg, dataset, **settings):
    """A model of ``cfg`` (random weights, seed 0) with the stage of ``settings``
    (``MODEL.CALIBRATION`` keys) fitted on ``dataset``; (model, fit summary)."""
    torch.manual_seed(0)
    model = build_calibrated_model(cfg).eval()
    fit_cfg = cfg.clone()
    fit_cfg.merge_from_list(
        [item for key, value in settings.items() for item in (f"MODEL.CALIBRATION.{key}", value)]
    )
    return model, fit_calibration_stage(fit_cfg, model, dataset)


def with_settings(cfg, **settings):
    cfg = cfg.clone()
    cfg.merge_from_list(
        [item for key, value in settings.items() for item in (f"MODEL.CALIBRATION.{key}", value)]
    )
    return cfg


def test_box_std_and_intervals_follow_the_output_boxes_at_a_resized_input():
    cfg = tiny_d2_cfg(dropout=0.3)
    cfg.MODEL.ROI_HEADS.NAME = "MCDropoutROIHeads"
    cfg.MODEL.MC_DROPOUT.NUM_SAMPLES = 4
    cfg.MODEL.MC_DROPOUT.OUTPUT_UNCERTAINTY = True
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.CALIBRATION.BOX_CONFORMAL.SCORE = "std"
    torch.manual_seed(0)
    model = build_calibrated_model(cfg).eval()
    intervals = model.calibration_stage.box_conformal
    intervals.quantiles.fill_(2.0)  # 2 box std on each side
    model.calibration_stage.seal(model)
    batch = resized(d2_batch(num_images=1, size=64), 128)  # network input 128 px, output 64 px
    torch.manual_seed(1)
    (inst,) = detections_of(model, batch)
    torch.manual_seed(1)
    with torch.no_grad():
        (raw,) = model.inference(batch, do_postprocess=False)  # the network-input frame
    assert len(inst) > 0 and inst.image_size == (64, 64) and raw.image_size == (128, 128)
    assert torch.allclose(inst.pred_boxes.tensor, raw.pred_boxes.tensor / 2, atol=1e-4)
    assert torch.allclose(inst.pred_box_std, raw.pred_box_std / 2, atol=1e-5)
    boxes, std = inst.pred_boxes.tensor.double(), inst.pred_box_std.double()
    half = 2 * torch.where(std > 0, std, torch.ones_like(std))  # a zero std scales by 1 pixel
    inward = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=torch.float64)
    assert torch.allclose(inst.pred_boxes_outer.tensor.double(), boxes - inward * half, atol=1e-4)
    assert torch.allclose(inst.pred_boxes_inner.tensor.double(), boxes + inward * half, atol=1e-4)


def coverage(model, cfg, dataset):
    evaluator = DetectionCalibrationEvaluator(dataset, (0.1,), bootstrap=0, distributed=False)
    results = inference_on_dataset(model, build_detection_test_loader(cfg, dataset), evaluator)["calibration"]
    return results["box_coverage@IoU0.1"], results["box_matched@IoU0.1"]


def test_interval_coverage_at_a_resized_input_is_the_native_one(splits):
    calib, val = splits
    cfg = tiny_d2_cfg()
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    settings = dict(METHOD="identity", IOU=0.1, THRESHOLD_BINS=1)
    box = {"BOX_CONFORMAL.SCORE": "normalised", "BOX_CONFORMAL.ALPHA": 0.5}
    model, summary = fitted_model(cfg, calib, **settings, **box)
    assert summary["box_conformal"]["matched_pairs"] > 40
    rates = {}
    for size in (64, 128):  # the images' own size, then a 2x resize
        test_cfg = with_settings(cfg, **settings, **box)
        test_cfg.INPUT.MIN_SIZE_TEST, test_cfg.INPUT.MAX_SIZE_TEST = size, size
        rates[size] = coverage(model, test_cfg, val)
    (p64, n64), (p128, n128) = rates[64], rates[128]
    assert n64 > 40 and n128 > 40
    spread = 3 * math.sqrt(0.25 * (1 / n64 + 1 / n128))  # 3 binomial standard errors of a difference
    assert abs(p64 - p128) <= spread, rates


def test_retinanet_temperature_scales_the_sigmoid_logit_and_maps_fit_deploy_and_go_stale(splits, tmp_path):
    calib, _ = splits
    cfg = tiny_zoo_cfg("COCO-Detection/retinanet_R_50_FPN_1x.yaml")
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = 0.01
    model, summary = fitted_model(cfg, calib, METHOD="temperature")
    assert summary["meta_architecture"] == "RetinaNet" and summary["detections"] > 0
    temperature = summary["temperature"]
    plain = build_calibrated_model(cfg).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if "calibration_stage" not in k})
    batch = d2_batch(num_images=1)
    (ours,), (reference,) = detections_of(model, batch), detections_of(plain, batch)
    assert len(ours) > 0 and torch.equal(ours.pred_boxes.tensor, reference.pred_boxes.tensor)
    expected = torch.sigmoid(logit(reference.scores.double()) / temperature)
    assert torch.allclose(ours.scores.double(), expected, atol=1e-6)
    # isotonic with box intervals: saved, reloaded by config, refused once the weights change
    box = {"IOU": 0.1, "THRESHOLD_BINS": 1, "BOX_CONFORMAL.SCORE": "additive", "BOX_CONFORMAL.ALPHA": 0.5}
    model, summary = fitted_model(cfg, calib, METHOD="isotonic", **box)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("retinanet_isotonic")
    deployed = with_settings(cfg, METHOD="isotonic", **box)
    loaded = build_calibrated_model(deployed).eval()
    DetectionCheckpointer(loaded).load(str(tmp_path / "retinanet_isotonic.pth"))
    (again,) = detections_of(loaded, batch)
    (expected,) = detections_of(model, batch)
    assert torch.equal(again.scores, expected.scores) and again.has("pred_boxes_outer")
    with torch.no_grad():
        loaded.head.cls_score.bias.add_(0.01)
    loaded.train().eval()
    with pytest.raises(RuntimeError, match="stale or mismatched"):
        detections_of(loaded, batch)
    # a Faster R-CNN calibrator loaded into a RetinaNet: another model, refused
    rcnn, _ = fitted_model(tiny_d2_cfg(), calib, METHOD="isotonic")
    other = build_calibrated_model(with_settings(cfg, METHOD="isotonic")).eval()
    other.load_state_dict(
        {
            **other.state_dict(),
            **{k: v for k, v in rcnn.state_dict().items() if k.startswith("calibration_stage.")},
        }
    )
    with pytest.raises(RuntimeError, match="stale or mismatched"):
        detections_of(other, batch)


def test_cascade_mask_rcnn_takes_the_score_maps_and_refuses_temperature_clearly(splits):
    calib, _ = splits
    cfg = tiny_zoo_cfg("Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml")
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    model, summary = fitted_model(cfg, calib, METHOD="platt")
    assert summary["meta_architecture"] == "GeneralizedRCNN" and summary["detections"] > 0
    plain = build_calibrated_model(cfg).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if "calibration_stage" not in k})
    batch = resized(d2_batch(num_images=1), 96)
    (inst,), (reference,) = detections_of(model, batch), detections_of(plain, batch)
    assert len(inst) > 0 and inst.has("pred_masks") and inst.image_size == (64, 64)
    calibrator = model.calibration_stage.calibrator
    assert torch.equal(inst.scores, calibrator.calibrate_scores(reference.scores, reference.pred_classes))
    assert torch.equal(inst.pred_masks, reference.pred_masks)
    with pytest.raises(
        ValueError, match="temperature scaling of ROI heads needs each detection's class probabilities"
    ):
        fitted_model(cfg, calib, METHOD="temperature")


def tiny_fcos():
    """detectron2's FCOS (shipped as the LazyConfig COCO-Detection/fcos_R_50_FPN_1x.py),
    shrunk to an R18 with a narrow head and 3 classes."""
    from detectron2 import model_zoo
    from detectron2.config import instantiate

    model = model_zoo.get_config("COCO-Detection/fcos_R_50_FPN_1x.py").model
    model.backbone.bottom_up.stages.depth = 18
    del model.backbone.bottom_up.stages.stride_in_1x1  # a BottleneckBlock argument
    model.head.conv_dims = [64, 64]  # GroupNorm(32): 2 channels per group on a 1x1 P7
    model.num_classes = 3
    model.test_score_thresh = 0.01
    torch.manual_seed(0)
    return instantiate(model).eval()


def test_fcos_is_calibrated_through_the_same_stage(splits):
    from conf_plugins.detectron2.calibration_stage import DetectionCalibrationStage, attach_calibration_stage

    calib, _ = splits
    model = attach_calibration_stage(tiny_fcos(), DetectionCalibrationStage("sigmoid"))
    reference = detections_of(model, d2_batch(num_images=1))[0]
    summary = fit_calibration_stage(with_settings(tiny_d2_cfg(), METHOD="temperature"), model, calib)
    assert summary["meta_architecture"] == "FCOS" and summary["detections"] > 0
    (inst,) = detections_of(model, d2_batch(num_images=1))
    expected = torch.sigmoid(logit(reference.scores.double()) / summary["temperature"])
    assert len(inst) > 0 and torch.allclose(inst.scores.double(), expected, atol=1e-6)


def test_class_sets_are_fitted_deployed_and_measured(splits):
    calib, val = splits
    cfg = tiny_d2_cfg()
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.ROI_HEADS.OUTPUT_CLASS_PROBS = True  # what the fit tool sets
    settings = {
        "METHOD": "identity",
        "IOU": 0.1,
        "THRESHOLD_BINS": 1,
        "CLASS_SETS.ENABLED": True,
        "CLASS_SETS.ALPHA": 0.2,
    }
    model, summary = fitted_model(cfg, calib, **settings)
    fitted = summary["class_sets"]
    assert fitted["matched"] >= 4 and fitted["alpha"] == 0.2
    (inst,) = detections_of(model, d2_batch(num_images=1))
    sets = model.calibration_stage.class_sets
    assert torch.equal(inst.pred_class_sets, (1 - inst.pred_class_probs[:, :3].double()) <= sets.thresholds)
    evaluator = DetectionCalibrationEvaluator(val, (0.1,), bootstrap=0, distributed=False)
    test_cfg = with_settings(cfg, **settings)
    results = inference_on_dataset(model, build_detection_test_loader(test_cfg, val), evaluator)[
        "calibration"
    ]
    assert 0 <= results["class_set_coverage@IoU0.1"] <= 1 and results["class_set_matched@IoU0.1"] > 0
    assert 0 <= results["class_set_size@IoU0.1"] <= 3
    with pytest.raises(RuntimeError, match="stale or mismatched"):  # another α than fitted
        deployed = build_calibrated_model(with_settings(cfg, **{**settings, "CLASS_SETS.ALPHA": 0.1})).eval()
        deployed.load_state_dict(model.state_dict())
        detections_of(deployed, d2_batch(num_images=1))


def test_mask_rcnn_stock_heads_take_temperature_and_class_sets(splits):
    calib, _ = splits
    cfg = tiny_zoo_cfg("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    settings = {"METHOD": "temperature", "IOU": 0.1, "CLASS_SETS.ENABLED": True, "CLASS_SETS.ALPHA": 0.3}
    torch.manual_seed(0)
    model = build_calibrated_model(
        with_settings(cfg, **{**settings, "METHOD": "", "CLASS_SETS.ENABLED": False})
    )
    assert type(model.roi_heads).__name__ == "StandardROIHeads"  # nothing asked: the stock heads
    cfg.MODEL.ROI_HEADS.OUTPUT_CLASS_PROBS = True  # what the fit tool sets
    model, summary = fitted_model(cfg, calib, **settings)
    assert type(model.roi_heads).__name__ == "ProbabilityROIHeads"  # the same weights + class probabilities
    assert summary["temperature"] > 0 and summary["class_sets"]["matched"] > 0
    (inst,) = detections_of(model, resized(d2_batch(num_images=1), 96))
    assert len(inst) > 0 and inst.has("pred_masks") and inst.has("pred_class_sets")
    assert inst.pred_masks.shape[-2:] == (64, 64)


def test_mask_iou_target_and_the_mask_quality_confidence(splits):
    from conf_plugins.detectron2.probability_heads import mask_quality

    probs = torch.tensor([[[[0.2, 0.7], [0.9, 0.4]]], [[[0.1, 0.2], [0.3, 0.4]]]])
    assert torch.allclose(mask_quality(probs), torch.tensor([0.8, 0.0]))  # mean inside p > 0.5; empty: 0
    calib, val = splits
    cfg = tiny_zoo_cfg("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.ROI_HEADS.OUTPUT_MASK_QUALITY = True
    settings = {"METHOD": "isotonic", "TARGET": "mask_iou", "IOU": 0.1, "THRESHOLD_BINS": 1}
    model, summary = fitted_model(cfg, calib, **settings)  # post-hoc mask scoring
    assert summary["target"] == "mask_iou" and summary["detections"] > 0
    (inst,) = detections_of(model, d2_batch(num_images=1))
    quality = inst.pred_mask_quality
    assert len(inst) > 0 and (((quality == 0) | (quality > 0.5)) & (quality <= 1)).all()
    evaluator = DetectionCalibrationEvaluator(
        val, (0.1,), bootstrap=0, distributed=False, mask_confidence="mask_quality"
    )
    loader = build_detection_test_loader(with_settings(cfg, **settings), val)
    results = inference_on_dataset(model, loader, evaluator)["calibration"]
    assert results["segm/count@IoU0.1"] == results["count@IoU0.1"] > 0
    assert (
        results["segm/mean_confidence@IoU0.1"] <= results["mean_confidence@IoU0.1"] + 1e-9
    )  # score x quality
    with pytest.raises(ValueError, match="TARGET mask_iou .* pred_masks"):
        fitted_model(tiny_d2_cfg(), calib, **settings)


@pytest.mark.parametrize(
    "key, value",
    [("CLASS_SETS.ALPHA", 1.5), ("BOX_CONFORMAL.ALPHA", 0.0), ("TARGET", "area"), ("METHOD", "beta")],
)
def test_bad_settings_are_refused_naming_the_key(key, value):
    with pytest.raises(ValueError, match=f"MODEL.CALIBRATION.{key}"):
        build_calibrated_model(with_settings(tiny_d2_cfg(), **{key: value}))


def test_nan_or_inf_detections_are_an_error_not_a_calibrated_number():
    from detectron2.structures import Boxes, Instances

    from conf_plugins.calibration.score_calibrators import DetectionScoreCalibrator
    from conf_plugins.detectron2.calibration_stage import DetectionCalibrationStage

    stage = DetectionCalibrationStage("softmax", DetectionScoreCalibrator("identity", 3))
    for scores, boxes in (
        (torch.tensor([float("nan")]), torch.ones(1, 4)),
        (torch.ones(1), torch.full((1, 4), math.inf)),
    ):
        inst = Instances((8, 8), pred_boxes=Boxes(boxes), scores=scores, pred_classes=torch.tensor([0]))
        with pytest.raises(ValueError, match="NaN or inf scores or boxes"):
            stage.calibrate(inst)
