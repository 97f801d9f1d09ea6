"""The bad-input catalogue of the mmseg adapter on the real mmseg: stale
calibration after fine-tuning, incomplete checkpoints, config values checked when a
component is built, the metric's own checks and test-time augmentation."""

import math

import pytest
import torch
from mmseg.registry import MODELS

import conf_plugins.mmseg  # noqa: F401  (registers our components)
from conf_plugins.calibration import BayesBinningCalibrator
from conf_plugins.mmseg import ConfidenceSegTTAModel, SegCalibrationMetric, SuccessSnapshotHook
from conf_plugins.mmseg.checkpoints import missing_weights, require_complete_checkpoint
from tests.fixtures import mmseg_batch, tiny_mmseg_model_cfg
from tests.mmseg.test_success_head import success_model_cfg


def calibrated_model():
    model = MODELS.build(success_model_cfg()).eval()
    model.set_calibrator(BayesBinningCalibrator(10).fit(torch.rand(500), torch.rand(500) < 0.7))
    return model


# ------------------------------------------------------------- stale calibration
@pytest.mark.parametrize(
    "weight", ["backbone.stem.0.weight", "decode_head.conv_seg.weight", "decode_head.convs.0.bn.running_mean"]
)
def test_calibration_is_stale_after_any_weight_it_depends_on_changes(weight):
    model = calibrated_model()
    with torch.no_grad():
        model.test_step(mmseg_batch(num_images=1))  # fitted weights: fine
    fine_tuned = {k: v.clone() for k, v in model.state_dict().items()}
    fine_tuned[weight] += 0.01  # e.g. load_from a *_bayes.pth, then train on
    model.load_state_dict(fine_tuned)
    with pytest.raises(RuntimeError, match="stale calibration"):
        model.test_step(mmseg_batch(num_images=1))


def test_the_fingerprint_check_is_cached_in_eval_mode_and_redone_after_training():
    model = calibrated_model()
    model.calibrator()
    assert model._fingerprint_verified  # eval mode: weights cannot change until train()/load
    model.train()
    assert not model._fingerprint_verified
    with torch.no_grad():
        model.backbone.stem[0].weight.mul_(1.001)
    model.eval()
    with pytest.raises(RuntimeError, match="stale"):
        model.calibrator()


# ------------------------------------------------------------- incomplete checkpoints
def test_an_stl_checkpoint_under_an_mtl_model_is_refused(tmp_path):
    stl = MODELS.build(tiny_mmseg_model_cfg())
    path = str(tmp_path / "stl.pth")
    torch.save({"state_dict": stl.state_dict(), "meta": {}}, path)
    mtl = MODELS.build(success_model_cfg())
    missing = missing_weights(mtl, path)
    assert missing and all(
        "success" in k or k.startswith(("bayes", "decode_head.task_weighting")) or "snapshot" in k
        for k in missing
    )
    with pytest.raises(ValueError, match=r"lacks \d+ weights of the config's model"):
        require_complete_checkpoint(mtl, path)
    require_complete_checkpoint(stl, path)  # complete: no error
    torch.save({"state_dict": {f"module.{k}": v for k, v in stl.state_dict().items()}}, path)
    assert missing_weights(stl, path) == []  # DDP-prefixed keys count


# ------------------------------------------------------------- config values
@pytest.mark.parametrize("value", [5.5, 0, -3, True, "200"])
def test_snapshot_iter_must_be_a_positive_integer(value):
    with pytest.raises(ValueError, match="snapshot_iter must be an integer >= 1"):
        SuccessSnapshotHook(snapshot_iter=value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_bins=7), "num_bins=7 must divide the 1500 fine bins"),
        (dict(num_bins=10, num_fine_bins=1234), "num_bins=10 must divide the 1234"),
        (dict(threshold=0.1234), "fine-bin edge"),
        (dict(threshold=0), r"threshold must be in \(0, 1\]"),
        (dict(temperature=0.0), "temperature must be a finite number > 0"),
        (dict(temperature=math.nan), "temperature must be a finite number > 0"),
        (dict(confidence="pred_confidence", temperature=2.0), "applies to confidence='max_softmax'"),
        (dict(confidence=""), "confidence must be"),
    ],
)
def test_metric_arguments_are_checked_when_built(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SegCalibrationMetric(**kwargs)


# ------------------------------------------------------------- metric inputs
def predicted(model, **batch_kwargs):
    with torch.no_grad():
        return [s.to_dict() for s in model.test_step(mmseg_batch(**batch_kwargs))]


def test_metric_refuses_images_without_ground_truth_and_all_ignore():
    model = MODELS.build(tiny_mmseg_model_cfg()).eval()
    samples = predicted(model, num_images=1)
    metric = SegCalibrationMetric()
    no_gt = {k: v for k, v in samples[0].items() if k != "gt_sem_seg"}
    with pytest.raises(ValueError, match="no ground truth"):
        metric.process({}, [no_gt])
    metric.process({}, predicted(model, num_images=2, ignore_fraction=1.1))
    with pytest.raises(ValueError, match="every pixel is ignore_index"):
        metric.compute_metrics(metric.results)


def test_metric_refuses_maps_that_do_not_belong_to_the_prediction():
    model = MODELS.build(tiny_mmseg_model_cfg()).eval()
    sample = predicted(model, num_images=1)[0]
    logits = sample["seg_logits"]["data"]
    sample["pred_sem_seg"]["data"] = (logits.argmax(0, keepdim=True) + 1) % logits.shape[0]
    with pytest.raises(ValueError, match="not the argmax of seg_logits"):
        SegCalibrationMetric().process({}, [sample])


def test_missing_confidence_map_names_what_exists():
    model = MODELS.build(success_model_cfg()).eval()  # not calibrated: no pred_confidence
    with pytest.raises(KeyError, match="fit Bayes binning first"):
        SegCalibrationMetric(confidence="pred_confidence").process({}, predicted(model))


# ------------------------------------------------------------- test-time augmentation
def tta_inputs(num_images=2):
    """Per image, the original and the horizontally flipped view (what mmseg's TTA pipeline
    makes), as SegTTAModel.test_step expects: a list of augmentations of the batch."""
    plain = mmseg_batch(num_images=num_images)
    flipped = mmseg_batch(num_images=num_images)
    for i, (a, b) in enumerate(zip(plain["data_samples"], flipped["data_samples"])):
        a.set_metainfo(dict(img_path=f"{i}.png"))
        b.set_metainfo(dict(img_path=f"{i}.png", flip=True, flip_direction="horizontal"))
    flipped["inputs"] = [img.flip(-1) for img in plain["inputs"]]
    return dict(
        inputs=[plain["inputs"], flipped["inputs"]],
        data_samples=[plain["data_samples"], flipped["data_samples"]],
    )


def test_tta_merges_every_map_of_the_success_model():
    model = MODELS.build(success_model_cfg()).eval()
    tta = ConfidenceSegTTAModel(module=model)
    data = tta_inputs()
    with torch.no_grad():
        merged = tta.test_step(data)
        views = [
            model.test_step(dict(inputs=data["inputs"][i], data_samples=data["data_samples"][i]))
            for i in range(2)
        ]
    for n, sample in enumerate(merged):
        probs = torch.stack([v[n].seg_logits.data.softmax(0) for v in views]).mean(0)
        assert torch.allclose(sample.seg_logits.data.softmax(0), probs, atol=1e-6)
        assert torch.equal(sample.pred_sem_seg.data[0], probs.argmax(0))
        score = torch.stack([v[n].success_score.data for v in views]).mean(0)
        assert torch.allclose(sample.success_score.data, score)
        assert sample.seg_logits.data.shape[0] == 4  # the success channel is not a class
    metric = SegCalibrationMetric(confidence="success_score")
    metric.process({}, [s.to_dict() for s in merged])  # consistent: no error
    assert 0 <= metric.compute_metrics(metric.results)["ECE"] <= 1


def test_tta_refuses_the_single_pass_bayes_calibration():
    tta = ConfidenceSegTTAModel(module=calibrated_model())
    with torch.no_grad(), pytest.raises(ValueError, match="cannot be merged under test-time"):
        tta.test_step(tta_inputs(num_images=1))


def test_stock_tta_maps_are_caught_by_the_metric():
    """mmseg's own SegTTAModel keeps the last view's logits beside the merged prediction."""
    from mmseg.models import SegTTAModel

    model = MODELS.build(tiny_mmseg_model_cfg()).eval()
    with torch.no_grad():
        model.decode_head.conv_seg.weight.mul_(100)  # a varied prediction, not one class
        stock = SegTTAModel(module=model).test_step(tta_inputs(num_images=2))
        ours = ConfidenceSegTTAModel(module=model).test_step(tta_inputs(num_images=2))
    with pytest.raises(ValueError, match="ConfidenceSegTTAModel"):
        SegCalibrationMetric().process({}, [s.to_dict() for s in stock])
    SegCalibrationMetric().process({}, [s.to_dict() for s in ours])  # consistent


def test_auto_confidence_is_the_pos_once_fitted_and_never_mixes():
    uncalibrated = MODELS.build(success_model_cfg()).eval()
    calibrated = calibrated_model()
    stl = MODELS.build(tiny_mmseg_model_cfg()).eval()
    for model, expected in (
        (uncalibrated, "success_score"),
        (calibrated, "pred_confidence"),
        (stl, "max_softmax"),
    ):
        metric = SegCalibrationMetric(confidence="auto")
        samples = predicted(model)
        metric.process({}, samples)
        assert metric._auto == expected
        reference = SegCalibrationMetric(confidence=expected)
        reference.process({}, samples)
        assert metric.compute_metrics(metric.results) == reference.compute_metrics(reference.results)
    metric = SegCalibrationMetric(confidence="auto")
    metric.process({}, predicted(calibrated))
    with pytest.raises(ValueError, match="resolved to 'pred_confidence' for earlier images"):
        metric.process({}, predicted(uncalibrated))
