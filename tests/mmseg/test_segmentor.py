"""Segmentors holding a per-pixel calibrator of their seg logits: refused until fitted, the
same prediction once fitted, sealed by the weights' fingerprint, refused under TTA."""

import pytest
import torch
from mmseg.registry import MODELS

from conf_plugins.calibration import BayesBinningCalibrator
from conf_plugins.mmseg.tta import ConfidenceSegTTAModel
from tests.fixtures import mmseg_batch, tiny_mmseg_model_cfg
from tests.mmseg.test_success_head import success_model_cfg


def calibrated_cfg(kind):
    cfg = tiny_mmseg_model_cfg()
    cfg.type = "CalibratedEncoderDecoder"
    cfg.pixel_calibration = kind
    return cfg


def raw_logits_and_labels(model, batch):
    with torch.no_grad(), model.uncalibrated_logits():
        samples = model.test_step(batch)
    return samples, [s.gt_sem_seg.data[0] for s in samples]


@pytest.mark.parametrize(
    "kind", ["selective_scaling", "local_temperature", "local_temperature_image", "image_temperature"]
)
def test_pixel_calibration_is_held_sealed_and_keeps_the_prediction(kind):
    model = MODELS.build(calibrated_cfg(kind)).eval()
    batch = mmseg_batch(num_images=2)
    with pytest.raises(RuntimeError, match="not fitted in these weights"):
        with torch.no_grad():
            model.test_step(batch)
    raw, labels = raw_logits_and_labels(model, batch)
    if kind == "selective_scaling":
        logits = torch.cat([s.seg_logits.data.flatten(1).T for s in raw])
        keep = torch.cat([y.flatten() for y in labels]) != 255
        model.pixel_calibrator.fit(logits[keep], torch.cat([y.flatten() for y in labels])[keep])
    else:  # the image-reading net gets the image the samples carry while fitting
        image = [s.calibration_image.data for s in raw] if model.reads_image else [None] * len(raw)
        assert all(i is None or i.shape == (3, *y.shape) for i, y in zip(image, labels))
        items = [
            (s.seg_logits.data, y, *([i] if i is not None else [])) for s, y, i in zip(raw, labels, image)
        ]
        model.pixel_calibrator.fit(items, iters=5)
    model.seal_pixel_calibration()
    with torch.no_grad():
        calibrated = model.test_step(batch)
    for before, after in zip(raw, calibrated):
        assert after.metainfo["pixel_calibration"] == kind and "pixel_calibration" not in before.metainfo
        assert torch.equal(after.pred_sem_seg.data, before.pred_sem_seg.data)
        assert after.seg_logits.data.shape[0] == model.num_classes and "calibration_image" not in after
        ratio = before.seg_logits.data / after.seg_logits.data  # the per-pixel temperature
        assert torch.allclose(ratio, ratio[:1].expand_as(ratio), rtol=1e-4) and (ratio > 0).all()
        if kind == "image_temperature":  # one temperature for the whole image
            assert torch.allclose(ratio, ratio.flatten()[:1].expand_as(ratio), rtol=1e-4)
    state = model.state_dict()
    assert (
        any(k.startswith("pixel_calibrator.") for k in state) and state["pixel_calibration_fingerprint"].any()
    )
    reloaded = MODELS.build(calibrated_cfg(kind)).eval()
    reloaded.load_state_dict(state)
    with torch.no_grad():
        again = reloaded.test_step(batch)
    assert torch.equal(again[0].seg_logits.data, calibrated[0].seg_logits.data)
    with pytest.raises(ValueError, match="cannot be merged under test-time augmentation"):
        ConfidenceSegTTAModel.merge_one([calibrated[0], calibrated[0]])
    with torch.no_grad():
        model.decode_head.conv_seg.bias.add_(0.1)  # fine-tuned after the fit
    model.forget_verified()
    with pytest.raises(RuntimeError, match="fitted for other weights"):
        with torch.no_grad():
            model.test_step(batch)


def test_image_reading_calibration_sees_the_image_and_only_on_a_plain_segmentor():
    model = MODELS.build(calibrated_cfg("local_temperature_image")).eval()
    batch = mmseg_batch(num_images=1)
    (raw,), _ = raw_logits_and_labels(model, batch)
    inputs = model.data_preprocessor(batch, False)["inputs"]
    assert torch.allclose(raw.calibration_image.data, inputs[0].float(), atol=1e-5)  # same size: no resize
    with pytest.raises(ValueError, match="held by CalibratedEncoderDecoder"):
        MODELS.build(success_model_cfg(pixel_calibration="local_temperature_image"))


def test_selective_scaling_of_a_success_model_selects_by_its_probability_of_success():
    model = MODELS.build(success_model_cfg(pixel_calibration="selective_scaling")).eval()
    batch = mmseg_batch(num_images=2)
    with pytest.raises(RuntimeError, match="probability of success fitted first"):
        with torch.no_grad():
            model.test_step(batch)
    raw, labels = raw_logits_and_labels(model, batch)
    bayes = BayesBinningCalibrator(model.bayes_num_bins)
    for sample, label in zip(raw, labels):
        correct = sample.pred_sem_seg.data[0] == label
        bayes.update(sample.success_score.data[0], correct, mask=label != 255)
    model.set_calibrator(bayes)
    raw, labels = raw_logits_and_labels(model, batch)
    logits = torch.cat([s.seg_logits.data.flatten(1).T for s in raw])
    pos = torch.cat([s.pred_confidence.data.flatten() for s in raw]).double()
    flat = torch.cat([y.flatten() for y in labels])
    keep = flat != 255
    summary = model.pixel_calibrator.fit(logits[keep], flat[keep], pos[keep])
    assert summary["selector"] == "given"
    model.seal_pixel_calibration()
    other = mmseg_batch(num_images=1, seed=3)
    (before,), _ = raw_logits_and_labels(model, other)
    with torch.no_grad():
        (after,) = model.test_step(other)
    ratio = (before.seg_logits.data / after.seg_logits.data)[0].double()
    t_right, t_wrong = model.pixel_calibrator.temperatures.tolist()
    wrong = after.pred_confidence.data[0] < float(model.pixel_calibrator.threshold)
    expected = torch.where(wrong, t_wrong, t_right).double()
    assert torch.allclose(ratio, expected, rtol=1e-4)
    # the Bayes binning stays valid: its fingerprint ignores the pixel calibrator
    model.calibrator()
