"""Class-wise ECE, LaECE and D-ECE against plain per-detection references, and
their state merging by addition."""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from conf_plugins.calibration.detection_stats import DetectionBinStats


def random_detections(seed, n=400, num_classes=4):
    g = np.random.default_rng(seed)
    conf = g.random(n)
    conf[:5] = [0.0, 1.0, 0.3, 0.5, 0.7]  # on bin edges: ((k-1)/J, k/J], 0 -> first bin
    correct = g.random(n) < conf
    iou = np.where(correct, 0.5 + 0.5 * g.random(n), 0.0)
    classes = g.integers(0, num_classes, n)
    classes[classes == 2] = 1  # class 2 has no detection: left out of the class means
    cx, cy = g.random(n), g.random(n)
    cx[:3] = [0.0, 1.0, 0.2]
    return conf, correct, iou, classes, cx, cy


def reference_bin(value, num_bins):
    """The bin ((k-1)/J, k/J] of ``value``, 0 in the first bin: the exact value compared with
    the float64 edges k/J (CalibrationStats' convention)."""
    v = Fraction(float(value))
    return next(k for k in range(num_bins) if v <= Fraction((k + 1) / num_bins))


def reference_error(conf, target, cells):
    """Σ over cells of (|B| / N) |mean conf − mean target|, written as a loop."""
    total, n = 0.0, len(conf)
    for cell in set(cells):
        members = [i for i in range(n) if cells[i] == cell]
        total += len(members) / n * abs(np.mean(conf[members]) - np.mean(target[members]))
    return total


def test_metrics_equal_plain_references():
    conf, correct, iou, classes, cx, cy = random_detections(0)
    stats = DetectionBinStats(4, (10, 5, 5)).update(
        torch.tensor(conf),
        torch.tensor(correct),
        torch.tensor(classes),
        torch.tensor(iou),
        features=(torch.tensor(cx), torch.tensor(cy)),
    )
    per_class_ece, per_class_laece = [], []
    for c in sorted(set(classes)):
        members = np.flatnonzero(classes == c)
        cells = [reference_bin(conf[i], 10) for i in members]
        per_class_ece.append(reference_error(conf[members], correct[members].astype(float), cells))
        per_class_laece.append(reference_error(conf[members], iou[members], cells))
    assert len(per_class_ece) == 3
    assert stats.classwise_ece() == pytest.approx(np.mean(per_class_ece), abs=1e-12)
    assert stats.laece() == pytest.approx(np.mean(per_class_laece), abs=1e-12)
    cells = [
        (reference_bin(conf[i], 10), reference_bin(cx[i], 5), reference_bin(cy[i], 5))
        for i in range(len(conf))
    ]
    assert stats.dece() == pytest.approx(reference_error(conf, correct.astype(float), cells), abs=1e-12)
    heat = stats.position_map()  # per (cx, cy) cell: that cell's ECE over confidence bins
    for x in range(5):
        for y in range(5):
            members = [i for i in range(len(conf)) if cells[i][1:] == (x, y)]
            if not members:
                assert math.isnan(heat[x, y])
                continue
            expected = reference_error(
                conf[members], correct[members].astype(float), [cells[i][0] for i in members]
            )
            assert float(heat[x, y]) == pytest.approx(expected, abs=1e-12)


def test_classwise_ece_of_one_class_is_the_plain_ece_and_dece_without_position_too():
    from conf_plugins.calibration import CalibrationStats

    conf, correct, *_ = random_detections(1)
    stats = DetectionBinStats(1, (10,)).update(
        torch.tensor(conf), torch.tensor(correct), torch.zeros(len(conf), dtype=torch.long)
    )
    plain = CalibrationStats().update(torch.tensor(conf), torch.tensor(correct)).compute()["ECE"]
    assert stats.classwise_ece() == pytest.approx(plain, abs=1e-12)
    assert stats.dece() == pytest.approx(plain, abs=1e-12)


def test_split_updates_merge_to_the_whole():
    conf, correct, iou, classes, cx, cy = random_detections(2)
    args = [torch.tensor(a) for a in (conf, correct, classes, iou)]
    feats = (torch.tensor(cx), torch.tensor(cy))
    whole = DetectionBinStats(4, (10, 5, 5)).update(*args, features=feats)
    a = DetectionBinStats(4, (10, 5, 5)).update(
        *[x[:150] for x in args], features=tuple(f[:150] for f in feats)
    )
    b = DetectionBinStats(4, (10, 5, 5)).update(
        *[x[150:] for x in args], features=tuple(f[150:] for f in feats)
    )
    assert torch.allclose(a.merge(b).state, whole.state, rtol=0, atol=1e-12)


def test_bad_input_is_a_clear_error():
    stats = DetectionBinStats(2, (10,))
    one = torch.ones(3)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        stats.update(torch.tensor([0.5, float("nan"), 0.1]), one.bool(), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="group"):
        stats.update(one * 0.5, one.bool(), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="differ in length"):
        stats.update(one * 0.5, one.bool(), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="features expected"):
        stats.update(one * 0.5, one.bool(), torch.zeros(3, dtype=torch.long), features=(one,))
    with pytest.raises(ValueError, match="different"):
        stats.merge(DetectionBinStats(3, (10,)))
    assert math.isnan(DetectionBinStats(2, (10,)).classwise_ece())
