"""Score calibrators inside detectron2 inference: temperature equals a box
predictor with scaled logits, the binned ones only remap scores, the fingerprint refuses
stale calibrators, and tools/fit_detection_calibration.py fits one on a held-out split, with
its operating thresholds, applied by config."""

import json
import math
import os

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, build_detection_test_loader
from detectron2.evaluation import inference_on_dataset

from conf_plugins.calibration.detection_stats import DetectionBinStats
from conf_plugins.detectron2 import DetectionCalibrationEvaluator
from conf_plugins.detectron2.calibration_stage import build_calibrated_model
from conf_plugins.detectron2.score_calibration import image_fold
from tests.fixtures import ROOT, d2_batch, detections_of, load_tool, tiny_d2_cfg


def calibrated_cfg(method=""):
    cfg = tiny_d2_cfg()
    cfg.MODEL.ROI_HEADS.OUTPUT_CLASS_PROBS = True
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.CALIBRATION.METHOD = method
    cfg.MODEL.CALIBRATION.NUM_BINS = 5
    cfg.MODEL.CALIBRATION.ISOTONIC_BINS = 20
    return cfg


def model_with(method, fit):
    """A random tiny model with a ``method`` calibrator fitted by ``fit(calibrator)``."""
    torch.manual_seed(0)
    model = build_calibrated_model(calibrated_cfg(method)).eval()
    fit(model.calibration_stage.calibrator)
    model.calibration_stage.seal(model)
    return model


def plain_twin(model):
    """The same weights without a fitted stage."""
    plain = build_calibrated_model(calibrated_cfg()).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if "calibration_stage" not in k})
    return plain


def test_temperature_scales_each_detections_class_probabilities():
    model = model_with("temperature", lambda c: c.log_temperature.fill_(math.log(2.5)))
    batch = d2_batch()
    ours, reference = detections_of(model, batch), detections_of(plain_twin(model), batch)
    for a, b in zip(ours, reference):
        assert len(a) > 0 and len(a) == len(b)
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
        assert torch.equal(a.pred_classes, b.pred_classes)
        scaled = torch.softmax(b.pred_class_probs.double().log() / 2.5, dim=1)  # softmax(z / T)
        assert torch.allclose(a.pred_class_probs.double(), scaled, atol=1e-6)
        assert torch.allclose(a.scores.double(), scaled[torch.arange(len(b)), b.pred_classes], atol=1e-6)
        assert not torch.allclose(a.scores, b.scores)


def fit_random_counts(calibrator):
    g = torch.Generator().manual_seed(3)
    scores = torch.rand(500, generator=g, dtype=torch.float64)
    stats = DetectionBinStats(calibrator.num_classes, (calibrator.stats_bins(),))
    stats.update(
        scores,
        torch.rand(500, generator=g, dtype=torch.float64) < scores**3,
        torch.randint(0, calibrator.num_classes, (500,), generator=g),
    )
    calibrator.fit_counts(stats)


@pytest.mark.parametrize("method", ["histogram", "isotonic"])
def test_binned_calibrators_remap_scores_and_change_no_box(method):
    model = model_with(method, fit_random_counts)
    batch = d2_batch()
    ours, reference = detections_of(model, batch), detections_of(plain_twin(model), batch)
    calibrator = model.calibration_stage.calibrator
    for a, b in zip(ours, reference):
        assert len(a) > 0 and torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
        assert torch.equal(a.pred_classes, b.pred_classes)
        assert torch.equal(a.scores, calibrator.calibrate_scores(b.scores, b.pred_classes))
        assert not torch.equal(a.scores, b.scores)
        if method == "isotonic":  # never reorders the detections of a class
            for c in b.pred_classes.unique():
                rows = b.pred_classes == c
                order = b.scores[rows].argsort()
                assert (a.scores[rows][order].diff() >= 0).all()


def test_calibrated_checkpoint_round_trips_and_stale_or_missing_calibrators_fail(tmp_path):
    model = model_with("isotonic", fit_random_counts)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("calibrated")
    batch = d2_batch()
    expected = detections_of(model, batch)
    loaded = model_with_weights(calibrated_cfg("isotonic"), str(tmp_path / "calibrated.pth"))
    again = detections_of(loaded, batch)
    assert torch.equal(again[0].scores, expected[0].scores)
    # fine-tuned weights under the old calibrator, even in the backbone: stale
    with torch.no_grad():
        loaded.backbone.bottom_up.stem.conv1.weight.add_(0.01)
    loaded.train().eval()
    with pytest.raises(RuntimeError, match="stale or mismatched"):
        detections_of(loaded, batch)
    # the same weights evaluated another way (MC dropout): mismatched inference mode
    mc = calibrated_cfg("isotonic")
    mc.MODEL.ROI_HEADS.NAME = "MCDropoutROIHeads"
    mc.MODEL.ROI_BOX_HEAD.NAME, mc.MODEL.ROI_BOX_HEAD.DROPOUT = (
        "DropoutFastRCNNConvFCHead",
        0.3,
    )  # same weights
    with pytest.raises(RuntimeError, match="stale or mismatched"):
        detections_of(model_with_weights(mc, str(tmp_path / "calibrated.pth")), batch)
    # a calibrator asked for, but the weights hold none
    plain = build_calibrated_model(calibrated_cfg("histogram")).eval()
    with pytest.raises(RuntimeError, match="no fitted calibrator"):
        detections_of(plain, batch)


def test_config_rejects_unknown_methods():
    with pytest.raises(ValueError, match="MODEL.CALIBRATION.METHOD"):
        build_calibrated_model(calibrated_cfg("beta"))


def test_fit_tool_fits_on_the_held_out_split_and_refuses_the_evaluated_one(tmp_path, monkeypatch):
    from conf_plugins.detectron2 import generate_demo_detection

    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))
    generate_demo_detection(
        str(tmp_path / "datasets" / "conf_demo_det"), {"train": 2, "calib": 3, "val": 2}, image_size=64
    )
    tool = load_tool("fit_detection_calibration")
    config = os.path.join(ROOT, "configs", "demo", "teacher.yaml")
    tiny = [
        "INPUT.MIN_SIZE_TEST",
        "64",
        "INPUT.MAX_SIZE_TEST",
        "64",
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
        "0.0",
    ]
    weights = str(tmp_path / "model.pth")
    method = lambda m: ["MODEL.CALIBRATION.METHOD", m]  # noqa: E731
    cfg, _ = tool.setup(
        tool.parse_args(
            ["--config-file", config, "--dataset", "conf_demo_det_calib", *tiny, *method("temperature")]
        )
    )
    torch.manual_seed(0)
    DetectionCheckpointer(build_calibrated_model(cfg), save_dir=str(tmp_path)).save("model")
    cfg.defrost()
    cfg.MODEL.CALIBRATION.METHOD = ""
    args = ["--config-file", config, "--dataset", "conf_demo_det_calib", *tiny, "MODEL.WEIGHTS", weights]
    # engine.setup checks the held-out split alone: a training set not on disk is no error
    assert tool.setup(
        tool.parse_args([*args, *method("temperature"), "DATASETS.TRAIN", "('absent_train',)"])
    )[0].DATASETS.TRAIN == ("absent_train",)
    with pytest.raises(ValueError, match="'absent' is not registered: .* --coco absent JSON"):
        tool.main([*args[:2], "--dataset", "absent", *tiny, *method("temperature")])
    with pytest.raises(ValueError, match="METHOD is '': name the method"):
        tool.main(args)
    with pytest.raises(FileNotFoundError, match="MODEL.WEIGHTS not found"):
        tool.main([*args[:-1], str(tmp_path / "absent.pth"), *method("temperature")])
    with pytest.raises(ValueError, match="evaluates or trains on"):
        tool.main(
            [
                *args[:2],
                "--dataset",
                "conf_demo_det_val",
                *tiny,
                "MODEL.WEIGHTS",
                weights,
                *method("temperature"),
            ]
        )
    for name in ("temperature", "histogram"):
        summary = tool.main([*args, *method(name)])
        assert summary["detections"] > 0 and summary["dataset"] == "conf_demo_det_calib"
        assert summary["meta_architecture"] == "GeneralizedRCNN"
        out = str(tmp_path / f"model_{name}.pth")
        assert json.load(open(out.replace(".pth", ".json")))["method"] == name
        with pytest.raises(FileExistsError, match="exists; pass --force"):
            tool.main([*args, *method(name)])
        deployed = cfg.clone()  # the calibrated checkpoint, deployed by config
        deployed.MODEL.CALIBRATION.METHOD = name
        model = model_with_weights(deployed, out)
        detections = detections_of(model, d2_batch(num_images=1))
        assert len(detections[0]) > 0 and model.calibration_stage.calibrator.fitted
    assert summary["uncalibrated"]["count@IoU0.5"] == summary["detections"]
    fitted = torch.load(str(tmp_path / "model_temperature.pth"), weights_only=False)
    assert fitted["calibration"]["temperature"] > 0
    assert fitted["model"]["calibration_stage.calibrator.fingerprint"].any()

    # operating thresholds: chosen with every method, applied by config
    with pytest.raises(ValueError, match="the fit chooses the thresholds"):
        tool.main([*args, *method("identity"), "MODEL.CALIBRATION.OPERATING_THRESHOLDS", "True"])
    identity = tool.main([*args, *method("identity")])
    evaluator = DetectionCalibrationEvaluator("conf_demo_det_calib", (0.5,), bootstrap=0, distributed=False)
    inference_on_dataset(
        model_with_weights(cfg, weights), build_detection_test_loader(cfg, "conf_demo_det_calib"), evaluator
    )
    reference, _ = evaluator.lrp_stats()[0].operating_thresholds(10)  # a real pass, not the stored outputs
    assert [v["threshold"] for v in identity["thresholds"].values()] == pytest.approx(reference.tolist())
    at_thresholds = identity["held_out_at_thresholds"]  # calib metrics of the kept detections
    assert at_thresholds["count@IoU0.5"] <= identity["uncalibrated"]["count@IoU0.5"]
    assert {"LRP@IoU0.5", "LaECE@IoU0.5", "LaACE@IoU0.5"} <= set(at_thresholds)
    iou_settings = ["MODEL.CALIBRATION.TARGET", "iou", "MODEL.CALIBRATION.CLASSWISE", "False"]
    platt = str(tmp_path / "platt" / "model.pth")
    summary = tool.main(["--output", platt, *args, *method("platt"), *iou_settings])
    params = torch.tensor(summary["params"])
    assert torch.equal(params, params[:1].expand_as(params))  # class-agnostic: one map
    # the choice criterion: each half of calib re-scored by the map fitted on the other half
    halves = {image_fold(d["image_id"]) for d in DatasetCatalog.get("conf_demo_det_calib")}
    crossed = summary["cross_fitted_at_thresholds"]
    assert ("LaECE@IoU0.5" in crossed) == (len(halves) == 2) and identity["cross_fitted_at_thresholds"] == {}
    deployed = cfg.clone()
    deployed.merge_from_list([*method("platt"), *iou_settings])
    all_detections = detections_of(model_with_weights(deployed, platt), d2_batch(num_images=1))
    deployed.MODEL.CALIBRATION.OPERATING_THRESHOLDS = True
    model = model_with_weights(deployed, platt)
    kept = detections_of(model, d2_batch(num_images=1))
    thresholds = model.calibration_stage.calibrator.thresholds
    expected = all_detections[0].scores.double() > thresholds[all_detections[0].pred_classes]
    assert len(kept[0]) == int(expected.sum())
    assert torch.equal(kept[0].scores, all_detections[0].scores[expected])
    # conformal box intervals fitted beside the calibrator, deployed with the same settings
    conformal = [
        "MODEL.CALIBRATION.BOX_CONFORMAL.SCORE",
        "normalised",
        "MODEL.CALIBRATION.BOX_CONFORMAL.ALPHA",
        "0.9",
        "MODEL.CALIBRATION.IOU",
        "0.1",  # an untrained model: matches at a low IoU
    ]
    out = str(tmp_path / "conformal" / "model.pth")
    summary = tool.main(["--output", out, *args, *method("identity"), *conformal])
    # fitted on the matched detections kept at the operating thresholds, as they are reported
    assert 0 < summary["box_conformal"]["matched_pairs"] <= summary["held_out_at_thresholds"]["count@IoU0.1"]
    deployed.MODEL.CALIBRATION.BOX_CONFORMAL.SCORE = "normalised"
    deployed.MODEL.CALIBRATION.BOX_CONFORMAL.ALPHA = 0.9
    with pytest.raises(RuntimeError, match="hold no fitted ones"):  # the platt checkpoint has none
        detections_of(model_with_weights(deployed, platt), d2_batch(num_images=1))
    deployed.merge_from_list(
        [*method("identity"), "MODEL.CALIBRATION.TARGET", "hit", "MODEL.CALIBRATION.CLASSWISE", "True"]
    )
    model = model_with_weights(deployed, out)
    (inst,) = detections_of(model, d2_batch(num_images=1))
    inner, outer = model.calibration_stage.box_conformal.intervals(inst.pred_boxes.tensor, inst.pred_classes)
    assert len(inst) and torch.allclose(inst.pred_boxes_outer.tensor.double(), outer, atol=1e-3)
    assert torch.allclose(inst.pred_boxes_inner.tensor.double(), inner, atol=1e-3)
    deployed.MODEL.CALIBRATION.BOX_CONFORMAL.ALPHA = 0.8
    with pytest.raises(RuntimeError, match="BOX_CONFORMAL settings"):
        detections_of(model_with_weights(deployed, out), d2_batch(num_images=1))
    deployed.MODEL.CALIBRATION.BOX_CONFORMAL.ALPHA = 0.9
    deployed.merge_from_list([*method("platt"), "MODEL.CALIBRATION.BOX_CONFORMAL.SCORE", ""])
    deployed.MODEL.CALIBRATION.CLASSWISE = False
    deployed.MODEL.CALIBRATION.TARGET = "hit"  # not what was fitted
    with pytest.raises(RuntimeError, match="stale or mismatched"):
        detections_of(model_with_weights(deployed, platt), d2_batch(num_images=1))


def model_with_weights(cfg, weights):
    model = build_calibrated_model(cfg).eval()
    DetectionCheckpointer(model).load(weights)
    return model


def test_an_unsupported_model_is_refused_naming_the_supported_ones():
    from conf_plugins.detectron2.calibration_stage import attach_calibration_stage

    cfg = tiny_d2_cfg()
    cfg.MODEL.META_ARCHITECTURE = "ProposalNetwork"
    with pytest.raises(ValueError, match="ProposalNetwork is not a detector .* RetinaNet, FCOS"):
        build_calibrated_model(cfg)
    with pytest.raises(ValueError, match="supports GeneralizedRCNN"):
        attach_calibration_stage(torch.nn.Linear(2, 2), None)


def test_rescored_detections_keep_their_box_std():
    """The box intervals with the 'std' score are fitted on re-scored stored detections: the
    MC-dropout box std must survive the re-scoring."""
    from detectron2.structures import Boxes, Instances

    from conf_plugins.calibration.score_calibrators import DetectionScoreCalibrator
    from conf_plugins.detectron2.score_calibration import _rescored

    inst = Instances((32, 32), pred_boxes=Boxes(torch.rand(3, 4)), pred_classes=torch.tensor([0, 1, 0]))
    inst.scores, inst.pred_box_std = torch.rand(3), torch.rand(3, 4)
    out = _rescored(inst, DetectionScoreCalibrator("identity", 2), "softmax")
    assert torch.equal(out.pred_box_std, inst.pred_box_std) and torch.equal(out.scores, inst.scores)
    inst.remove("pred_box_std")
    assert not _rescored(inst, DetectionScoreCalibrator("identity", 2), "softmax").has("pred_box_std")
