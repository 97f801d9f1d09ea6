"""SegCalibrationMetric's bootstrap intervals on a real mmseg model: each equals the
percentiles of a plain loop that merges the drawn images' statistics, they bracket the
point value, records are written for paired comparisons, and bad settings are errors."""

import numpy as np
import pytest
import torch
from mmseg.registry import MODELS

from conf_plugins.calibration import CalibrationStats
from conf_plugins.calibration.bootstrap import paired_bootstrap, resample_counts
from conf_plugins.mmseg import SegCalibrationMetric
from tests.fixtures import mmseg_batch, tiny_mmseg_model_cfg


@pytest.fixture(scope="module")
def samples():
    torch.manual_seed(0)
    model = MODELS.build(tiny_mmseg_model_cfg()).eval()
    with torch.no_grad():
        return [s.to_dict() for s in model.test_step(mmseg_batch(num_images=6, size=32))]


def test_intervals_equal_a_plain_loop(samples, tmp_path):
    metric = SegCalibrationMetric(bootstrap=60, bootstrap_seed=5, output_dir=str(tmp_path))
    metric.process({}, samples)
    per_image = [CalibrationStats(metric.num_fine_bins).load_state_dict(r["stats"]) for r in metric.results]
    metrics = metric.compute_metrics(metric.results)
    values = []
    for row in resample_counts(len(per_image), 60, seed=5):
        total = CalibrationStats(metric.num_fine_bins)
        for image, times in enumerate(row.tolist()):
            for _ in range(int(times)):
                total.merge(per_image[image])
        values.append(total.compute()["ECE"])
    lo, hi = np.percentile(values, [2.5, 97.5])
    assert metrics["ECE_ci_lo"] == pytest.approx(lo, rel=1e-9)
    assert metrics["ECE_ci_hi"] == pytest.approx(hi, rel=1e-9)
    assert metrics["ECE_ci_lo"] <= metrics["ECE"] <= metrics["ECE_ci_hi"]
    assert metrics["AUROC_ci_lo"] < metrics["AUROC_ci_hi"]
    saved = torch.load(tmp_path / "records_max_softmax.pt", weights_only=False)
    assert saved["records"].shape == (6, 5 * 2 * metric.num_fine_bins) and len(saved["images"]) == 6
    # a method against itself: no significant difference on any metric
    paired = paired_bootstrap(saved["records"], saved["records"], metric.metric_fn(), num_resamples=50)
    assert all(p["verdict"] == "no significant difference" for p in paired.values())


def test_no_bootstrap_and_bad_settings(samples):
    metric = SegCalibrationMetric(bootstrap=0)
    metric.process({}, samples)
    assert not any(k.endswith("_ci_lo") for k in metric.compute_metrics(metric.results))
    with pytest.raises(ValueError, match="num_resamples must be an integer >= 2"):
        SegCalibrationMetric(bootstrap=1)
    with pytest.raises(ValueError, match=r"level must lie in \(0, 1\)"):
        SegCalibrationMetric(bootstrap_level=1.5)


def test_classwise_ece_and_image_level_aurc(samples):
    """Class-wise ECE = the mean over predicted classes of the ECE of their labelled pixels;
    image-level AURC ranks images by mean confidence against their pixel error rate; both
    with intervals that bracket them."""
    from conf_plugins.calibration.ranking import image_level_aurc

    metric = SegCalibrationMetric(bootstrap=100)
    metric.dataset_meta = {"classes": tuple(f"c{i}" for i in range(4))}
    metric.process({}, samples)
    metrics = metric.compute_metrics(metric.results)
    conf, correct, pred, per_image = [], [], [], []
    for s in samples:
        logits = s["seg_logits"]["data"].float()
        p, label = s["pred_sem_seg"]["data"].squeeze(0), s["gt_sem_seg"]["data"].squeeze(0)
        valid = label != 255
        c = torch.softmax(logits, 0).amax(0)
        conf.append(c[valid]), correct.append((p == label)[valid]), pred.append(p[valid])
        per_image.append((float(c[valid].mean()), float((p != label)[valid].double().mean())))
    conf, correct, pred = torch.cat(conf).double(), torch.cat(correct), torch.cat(pred)
    eces = []
    for k in pred.unique().tolist():
        rows = pred == k
        stats = CalibrationStats().update(conf[rows], correct[rows])
        eces.append(stats.compute(num_bins=10)["ECE"])
    assert metrics["classwise_ECE"] == pytest.approx(float(np.mean(eces)), rel=1e-6)
    assert metrics["classwise_ECE_ci_lo"] <= metrics["classwise_ECE"] <= metrics["classwise_ECE_ci_hi"]
    # image-level AURC: mean over k of the mean error of the k most confident images
    order = sorted(per_image, key=lambda t: -t[0])
    plain = np.mean([np.mean([r for _, r in order[: k + 1]]) for k in range(len(order))])
    assert metrics["image_AURC"] == pytest.approx(plain, rel=1e-6)
    assert image_level_aurc([0.9, 0.1], [0.0, 1.0], np.array([[2.0, 0.0]]))[0] == 0.0  # weights: copies
    assert metrics["image_AURC_ci_lo"] <= metrics["image_AURC"] <= metrics["image_AURC_ci_hi"]


def test_risk_control_file_must_match_the_evaluated_confidence(samples, tmp_path):
    import json

    fitted = {"method": "conformal_risk_control", "threshold": 0.5, "alpha": 0.1, "num_fine_bins": 1500}
    path = tmp_path / "risk_control.json"
    path.write_text(json.dumps({**fitted, "confidence": "max_softmax", "temperature": 1.0}))
    metric = SegCalibrationMetric(bootstrap=20, risk_control=str(path))
    metric.process({}, samples)
    metrics = metric.compute_metrics(metric.results)
    assert 0 <= metrics["selective_risk"] <= 1 and 0 <= metrics["abstention"] <= 1
    assert metrics["selective_risk_ci_lo"] <= metrics["selective_risk"] <= metrics["selective_risk_ci_hi"]
    scaled = SegCalibrationMetric(temperature=2.0, risk_control=str(path))
    scaled.process({}, samples)
    with pytest.raises(ValueError, match="guarantee does not carry over"):
        scaled.compute_metrics(scaled.results)
    with pytest.raises(ValueError, match="fitted with 1500 fine bins, this metric has 600"):
        SegCalibrationMetric(num_fine_bins=600, risk_control=str(path))
    with pytest.raises(FileNotFoundError, match="no such file"):
        SegCalibrationMetric(risk_control=str(tmp_path / "absent.json"))


def test_the_fused_pass_gives_the_metrics_of_the_general_path(samples, monkeypatch):
    """With the kernel built, max-softmax images take one fused pass (statistics, class-wise
    sums, the argmax check); the metrics equal those of pixel_confidence + update."""
    import importlib

    metric_module = importlib.import_module("conf_plugins.mmseg.metric")
    fused_calls = []

    def spy(*args, **kwargs):
        fused_calls.append(metric_module.max_softmax_statistics.__wrapped__(*args, **kwargs))
        return fused_calls[-1]

    def run():
        metric = SegCalibrationMetric(bootstrap=0)
        metric.dataset_meta = {"classes": tuple(f"c{i}" for i in range(4))}
        metric.process({}, samples)
        return metric.compute_metrics(metric.results)

    spy.__wrapped__ = metric_module.max_softmax_statistics
    monkeypatch.setattr(metric_module, "max_softmax_statistics", spy)
    fused = run()
    if fused_calls[0] is None:
        pytest.skip("the kernel is not built here (tests/calibration/test_pixel_confidence.py requires it)")
    assert len(fused_calls) == len(samples) and all(c is not None for c in fused_calls)
    monkeypatch.setattr(metric_module, "max_softmax_statistics", lambda *args, **kwargs: None)
    general = run()
    assert fused.keys() == general.keys()
    for key, value in general.items():
        assert fused[key] == pytest.approx(value, rel=1e-9, abs=1e-12, nan_ok=True), key
    broken = [dict(s) for s in samples]
    logits = broken[1]["seg_logits"]["data"].clone()
    logits[:, 0, 0] = logits[:, 0, 0].flip(0) * 2  # another argmax at one pixel
    broken[1] = {**broken[1], "seg_logits": {"data": logits}}
    monkeypatch.setattr(metric_module, "max_softmax_statistics", spy.__wrapped__)
    with pytest.raises(ValueError, match="pred_sem_seg is not the argmax of seg_logits at 1 pixels"):
        SegCalibrationMetric(bootstrap=0).process({}, broken)
