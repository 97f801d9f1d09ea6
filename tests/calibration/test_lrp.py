"""LRP, oLRP and LRP-optimal thresholds against a plain implementation of the TPAMI 2021
equation over every threshold, merging, per-image records and bad input."""

import math

import numpy as np
import pytest
import torch

from conf_plugins.calibration.bootstrap import bootstrap_intervals
from conf_plugins.calibration.lrp import LRPStats

TAU = 0.5


def detections(seed, n=300, num_classes=4, num_bins=50):
    """Scores strictly inside their bins (so bin-edge thresholds see every distinct kept set)."""
    g = np.random.default_rng(seed)
    scores = (g.integers(0, num_bins, n) + g.uniform(0.1, 0.9, n)) / num_bins
    correct = g.random(n) < scores
    iou = np.where(correct, g.uniform(TAU, 1.0, n), g.uniform(0, TAU, n))
    classes = g.integers(0, num_classes, n)
    classes[classes == 3] = 2  # class 3: ground truth but no detection
    gt = g.integers(0, num_classes, n // 2)
    gt[gt == 1] = 0  # class 1: detections but no ground truth
    gt = np.concatenate([gt, classes[correct]])  # every TP has its GT box
    gt = gt[gt != 1]
    return scores, correct, iou, classes, gt


def plain_lrp(scores, correct, iou, num_gt, threshold):
    """Eq. 5 of Oksuz et al. for the detections with score > threshold, written out."""
    kept = scores > threshold
    tp = int((correct & kept).sum())
    fp = int(kept.sum()) - tp
    fn = num_gt - tp
    loc = float(((1 - iou) * (correct & kept)).sum())
    lrp = (loc / (1 - TAU) + fp + fn) / (tp + fp + fn)
    return lrp, (loc / tp if tp else math.nan), (fp / (tp + fp) if tp + fp else math.nan), fn / num_gt


def plain_optimum(scores, correct, iou, num_gt, num_bins):
    """The highest of the thresholds j/K with the smallest plain LRP."""
    best = None
    for j in range(num_bins):
        value = plain_lrp(scores, correct, iou, num_gt, j / num_bins)
        if best is None or value[0] <= best[1][0] + 1e-12:
            best = (j / num_bins, value)
    return best


def test_olrp_and_thresholds_equal_a_plain_search():
    scores, correct, iou, classes, gt = detections(0)
    stats = LRPStats(4, num_bins=50).update(scores, correct, classes, iou).add_ground_truth(gt)
    per_class = stats.per_class()
    olrp, parts = [], {"loc": [], "fp": [], "fn": []}
    for c in range(4):
        num_gt = int((gt == c).sum())
        if num_gt == 0:
            assert math.isnan(per_class["oLRP"][c]) and math.isnan(per_class["threshold"][c])
            continue
        m = classes == c
        threshold, (lrp, loc, fp, fn) = plain_optimum(scores[m], correct[m], iou[m], num_gt, 50)
        assert per_class["oLRP"][c] == pytest.approx(lrp, abs=1e-12)
        assert per_class["threshold"][c] == pytest.approx(threshold)
        for name, value in (("loc", loc), ("fp", fp), ("fn", fn)):
            got = per_class[f"oLRP_{name if name == 'loc' else name.upper()}"][c]
            assert (math.isnan(got) and math.isnan(value)) or got == pytest.approx(value, abs=1e-12)
            parts[name].append(value)
        olrp.append(lrp)
    assert per_class["oLRP"][3] == 1.0  # GT, no detection: every GT box missed
    metrics = stats.compute()
    assert metrics["oLRP"] == pytest.approx(np.mean(olrp))
    assert metrics["oLRP_FN"] == pytest.approx(np.mean(parts["fn"]))
    assert metrics["oLRP_loc"] == pytest.approx(np.nanmean(parts["loc"]))
    at_zero = [
        plain_lrp(scores[classes == c], correct[classes == c], iou[classes == c], int((gt == c).sum()), 0.0)[
            0
        ]
        for c in (0, 2, 3)
    ]
    assert metrics["LRP"] == pytest.approx(np.mean(at_zero))
    assert metrics["oLRP"] <= metrics["LRP"]


def test_operating_thresholds_fall_back_to_the_pooled_one():
    scores, correct, iou, classes, gt = detections(1)
    stats = LRPStats(4, num_bins=50).update(scores, correct, classes, iou).add_ground_truth(gt)
    pooled_threshold, _ = plain_optimum(
        scores[classes != 1], correct[classes != 1], iou[classes != 1], len(gt), 50
    )
    # the pooled curve counts every class's detections (also those of classes without GT)
    pooled_threshold, _ = plain_optimum(scores, correct, iou, len(gt), 50)
    assert stats.pooled_threshold() == pytest.approx(pooled_threshold)
    thresholds, pooled = stats.operating_thresholds(min_detections=10)
    assert pooled.tolist() == [False, True, False, True]  # 1: no GT; 3: no detection
    assert thresholds[1] == thresholds[3] == pytest.approx(pooled_threshold)
    assert thresholds[0] == pytest.approx(stats.per_class()["threshold"][0])
    few = int((classes == 0).sum()) + 1
    assert stats.operating_thresholds(min_detections=few)[1][0]


def test_merge_records_and_bootstrap():
    scores, correct, iou, classes, gt = detections(2)
    whole = LRPStats(4, 50).update(scores, correct, classes, iou).add_ground_truth(gt)
    a = (
        LRPStats(4, 50)
        .update(scores[:100], correct[:100], classes[:100], iou[:100])
        .add_ground_truth(gt[:40])
    )
    b = (
        LRPStats(4, 50)
        .update(scores[100:], correct[100:], classes[100:], iou[100:])
        .add_ground_truth(gt[40:])
    )
    assert torch.allclose(a.merge(b).as_record(), whole.as_record())
    images = np.arange(len(scores)) % 7
    gt_images = np.arange(len(gt)) % 7
    records = whole.records_by_image(images, 7, scores, correct, classes, iou, gt_images, gt)
    assert torch.allclose(records.to_dense().sum(0), whole.as_record())
    summed = whole.metrics_of_records(records.to_dense().sum(0, keepdim=True))
    assert summed["oLRP"][0] == pytest.approx(whole.compute()["oLRP"])
    intervals = bootstrap_intervals(records, whole.metrics_of_records, num_resamples=50)
    assert intervals["oLRP"][0] <= whole.compute()["oLRP"] <= intervals["oLRP"][1]


def test_bad_input():
    with pytest.raises(ValueError, match=r"τ must lie in \[0, 1\)"):
        LRPStats(3, tp_iou=1.0)
    stats = LRPStats(3)
    with pytest.raises(ValueError, match="finite and in"):
        stats.update([float("nan")], [True], [0], [0.7])
    with pytest.raises(ValueError, match="differ in length"):
        stats.update([0.5, 0.6], [True], [0], [0.7])
    with pytest.raises(ValueError, match=r"class indices must be in \[0, 3\)"):
        stats.update([0.5], [True], [3], [0.7])
    with pytest.raises(ValueError, match="no ground truth"):
        stats.update([0.5], [False], [0], [0.0]).pooled_threshold()
    with pytest.raises(ValueError, match="min_detections must be >= 1"):
        stats.operating_thresholds(0)
    assert math.isnan(LRPStats(2).compute()["oLRP"])
