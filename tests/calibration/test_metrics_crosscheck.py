"""CalibrationStats.compute() against scikit-learn, torchmetrics and brute-force definitions."""

import itertools
import math

import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from torchmetrics.functional.classification import binary_calibration_error

from conf_plugins.calibration import CalibrationStats

from ._data import continuous_sample, quantised_sample


def _stats(conf, correct, **kw):
    return CalibrationStats(**kw).update(torch.from_numpy(conf), torch.from_numpy(correct))


def _ddn_brute_force(conf, correct, num_bins):
    """ECE / MSCE / MCE by DDN eq. 13–15, one sample at a time: D_k = ((k-1)/K, k/K], 0 -> D_1."""
    members = {k: [] for k in range(1, num_bins + 1)}
    for c, y in zip(conf.tolist(), correct.tolist()):
        k = next(k for k in range(1, num_bins + 1) if c <= k / num_bins)
        members[k].append((c, y))
    n = len(conf)
    ece = msce = mce = 0.0
    for items in members.values():
        if items:
            freq = sum(y for _, y in items) / len(items)  # eq. 13
            mean_conf = sum(c for c, _ in items) / len(items)  # eq. 14
            ece += len(items) / n * abs(freq - mean_conf)
            msce += len(items) / n * abs(freq - mean_conf) ** 2  # eq. 15
            mce = max(mce, abs(freq - mean_conf))
    return ece, msce, mce


@pytest.mark.parametrize("num_bins", [10, 15])
def test_binned_errors_match_ddn_equations(num_bins):
    conf, correct = quantised_sample(3000, seed=num_bins)
    out = _stats(conf, correct).compute(num_bins=num_bins)
    ece, msce, mce = _ddn_brute_force(conf, correct, num_bins)
    assert out["ECE"] == pytest.approx(ece, rel=1e-12)
    assert out["MSCE"] == pytest.approx(msce, rel=1e-12)
    assert out["MCE"] == pytest.approx(mce, rel=1e-12)


def test_brute_force_on_edges_and_ties():
    # confidences exactly on coarse edges: the brute force puts them in the bin below
    conf = np.array([0.0, 0.1, 0.1, 0.3, 0.3, 0.5, 0.7, 0.9, 1.0, 1.0, 0.25, 0.65])
    correct = np.array([0, 1, 0, 1, 1, 0, 1, 1, 1, 0, 1, 0], dtype=bool)
    out = _stats(conf, correct).compute(num_bins=10)
    assert (out["ECE"], out["MSCE"], out["MCE"]) == pytest.approx(
        _ddn_brute_force(conf, correct, 10), rel=1e-12
    )


def test_calibration_errors_match_torchmetrics():
    """torchmetrics bins [k/K, (k+1)/K) (and 1.0 in an extra bin) where DDN bins ((k-1)/K, k/K],
    so compare on continuous data with no value on an edge or at 1. torchmetrics' 'l2' norm
    is the root of MSCE (no debiasing)."""
    conf, correct = continuous_sample(4000)
    out = _stats(conf, correct).compute(num_bins=15)
    preds, target = torch.from_numpy(conf), torch.from_numpy(correct).long()
    tm = {
        norm: float(binary_calibration_error(preds, target, n_bins=15, norm=norm))
        for norm in ("l1", "l2", "max")
    }
    assert out["ECE"] == pytest.approx(tm["l1"], rel=1e-9)
    assert out["MSCE"] == pytest.approx(tm["l2"] ** 2, rel=1e-9)
    assert out["MCE"] == pytest.approx(tm["max"], rel=1e-9)


def test_scores_match_sklearn():
    conf, correct = quantised_sample(5000, seed=3)
    out = _stats(conf, correct).compute(num_bins=15, threshold=0.5)
    y = correct.astype(int)
    confident = conf > 0.5
    assert out["AUROC"] == pytest.approx(skm.roc_auc_score(y, conf), rel=1e-12)
    assert out["AUPR_In"] == pytest.approx(skm.average_precision_score(y, conf), rel=1e-12)
    assert out["AUPR_Out"] == pytest.approx(skm.average_precision_score(1 - y, -conf), rel=1e-12)
    assert out["Brier"] == pytest.approx(skm.brier_score_loss(y, conf), rel=1e-12)
    assert out["NLL"] == pytest.approx(skm.log_loss(y, conf, labels=[0, 1]), rel=1e-12)
    assert out["NLL_DDN"] == pytest.approx(np.mean(-np.log(conf)), rel=1e-12)
    assert out["accuracy"] == pytest.approx(skm.accuracy_score(y, confident), rel=1e-12)
    assert out["precision"] == pytest.approx(skm.precision_score(y, confident), rel=1e-12)
    assert out["recall"] == pytest.approx(skm.recall_score(y, confident), rel=1e-12)
    assert out["F0.5"] == pytest.approx(skm.fbeta_score(y, confident, beta=0.5), rel=1e-12)
    assert out["coverage"] == pytest.approx(confident.mean(), rel=1e-12)
    # failure detection = recall of "unconfident" among the wrong predictions
    assert out["failure_detection"] == pytest.approx(skm.recall_score(1 - y, ~confident), rel=1e-12)
    assert out["count"] == len(conf)
    assert out["success_rate"] == pytest.approx(y.mean(), rel=1e-12)
    assert out["mean_confidence"] == pytest.approx(conf.mean(), rel=1e-12)


def test_log_losses_clip_like_sklearn():
    # confidence 1.0 on a wrong and 0.0 on a right prediction: log terms clipped at float64 eps
    conf = np.array([1.0, 0.0, 0.9, 0.2])
    correct = np.array([0, 1, 1, 0], dtype=bool)
    out = _stats(conf, correct).compute()
    assert out["NLL"] == pytest.approx(skm.log_loss(correct.astype(int), conf), rel=1e-9)
    eps = np.finfo(np.float64).eps
    assert out["NLL_DDN"] == pytest.approx(np.mean(-np.log(np.maximum(conf, eps))), rel=1e-12)


@pytest.mark.parametrize("threshold", [0.3, 0.7])
def test_thresholded_metrics_other_thresholds(threshold):
    conf, correct = quantised_sample(2000, seed=4)
    out = _stats(conf, correct).compute(threshold=threshold)
    confident = conf > threshold
    assert out["precision"] == pytest.approx(skm.precision_score(correct, confident))
    assert out["F0.5"] == pytest.approx(skm.fbeta_score(correct, confident, beta=0.5))
    assert out["accuracy"] == pytest.approx(skm.accuracy_score(correct, confident))


def test_threshold_is_strict_on_the_edge():
    # c == 0.5 exactly is unconfident (c > threshold); the next float above it is confident
    conf = np.array([0.5, np.nextafter(0.5, 1.0), 0.2, 0.9])
    correct = np.array([1, 0, 0, 1], dtype=bool)
    out = _stats(conf, correct).compute(threshold=0.5)
    # tp = 1 (0.9), fp = 1 (0.5+), fn = 1 (0.5), tn = 1 (0.2)
    assert out["precision"] == 0.5 and out["recall"] == 0.5 and out["accuracy"] == 0.5
    assert out["F0.5"] == pytest.approx(skm.fbeta_score(correct, conf > 0.5, beta=0.5))


def _aurc_per_sample(conf, correct):
    """Geifman's AURC: mean over i of the error rate of the i most confident samples."""
    order = np.argsort(-conf, kind="stable")
    wrong = np.cumsum(~correct[order])
    return np.mean(wrong / np.arange(1, len(conf) + 1))


def test_aurc_matches_per_sample_definition_on_distinct_values():
    conf, correct = quantised_sample(1500, seed=5, distinct=True)
    stats = _stats(conf, correct)
    assert stats.compute()["AURC"] == pytest.approx(_aurc_per_sample(conf, correct), rel=1e-10)
    coverage, risk = stats.risk_coverage()  # one point per sample here
    assert risk.mean() == pytest.approx(stats.compute()["AURC"], rel=1e-10)
    assert coverage[-1] == 1.0 and risk[-1] == pytest.approx(1 - correct.mean())


def test_aurc_with_ties_is_the_mean_over_tie_orders():
    # three tie groups; enumerate every order inside each group
    groups = [(0.95, [1, 1, 0]), (0.6, [1, 0, 0, 1]), (0.2, [0, 1])]
    conf = np.concatenate([[c] * len(ys) for c, ys in groups])
    correct = np.concatenate([ys for _, ys in groups]).astype(bool)
    values = []
    for orders in itertools.product(*[itertools.permutations(ys) for _, ys in groups]):
        ordered = np.concatenate(orders).astype(bool)
        wrong = np.cumsum(~ordered)
        values.append(np.mean(wrong / np.arange(1, len(ordered) + 1)))
    out = _stats(conf, correct).compute()
    assert out["AURC"] == pytest.approx(np.mean(values), rel=1e-12)
    assert out["AUROC"] == pytest.approx(skm.roc_auc_score(correct, conf), rel=1e-12)


def test_one_class_only_gives_documented_nans():
    conf = np.array([0.2, 0.6, 0.9])
    all_right = _stats(conf, np.ones(3, dtype=bool)).compute()
    assert math.isnan(all_right["AUROC"]) and math.isnan(all_right["AUPR_Out"])
    assert all_right["AUPR_In"] == 1.0 and all_right["AURC"] == 0.0
    assert all_right["recall"] == pytest.approx(2 / 3) and all_right["precision"] == 1.0
    assert math.isnan(all_right["failure_detection"])  # no wrong prediction to flag
    assert all_right["coverage"] == pytest.approx(2 / 3)
    all_wrong = _stats(conf, np.zeros(3, dtype=bool)).compute()
    assert math.isnan(all_wrong["AUROC"]) and math.isnan(all_wrong["AUPR_In"])
    assert all_wrong["AUPR_Out"] == 1.0 and all_wrong["AURC"] == 1.0
    assert math.isnan(all_wrong["recall"]) and all_wrong["precision"] == 0.0
    assert all_wrong["F0.5"] == 0.0  # fp > 0
    unconfident_wrong = _stats(np.array([0.1, 0.2]), np.zeros(2, dtype=bool)).compute()
    assert math.isnan(unconfident_wrong["precision"]) and math.isnan(unconfident_wrong["F0.5"])
    assert unconfident_wrong["accuracy"] == 1.0  # all tn
    assert unconfident_wrong["failure_detection"] == 1.0 and unconfident_wrong["coverage"] == 0.0
