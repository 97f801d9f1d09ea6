"""Conformal risk control of selective prediction: the threshold against a plain search,
the guarantee E[risk] <= α over 300 random calibration / test splits (and not far below:
α − 2/(n+1)) with a coverage within 10 % of the best threshold chosen with hindsight on the
test split, losses from per-image records, bad input."""

import numpy as np
import pytest
import torch

from conf_plugins.calibration import CalibrationStats
from conf_plugins.calibration.risk_control import (
    crc_threshold,
    fit_risk_threshold,
    selective_losses,
    selective_metrics,
)

FINE = 200


@pytest.fixture(scope="module")
def records():
    """1000 images of 300 pixels; each image has its own difficulty."""
    g = np.random.default_rng(0)
    rows = []
    for _ in range(1000):
        difficulty = g.uniform(0.0, 0.6)
        conf = np.clip(g.beta(5, 2, 300) - difficulty * g.random(300), 0.001, 1.0)
        correct = g.random(300) < np.clip(conf + 0.1 - difficulty, 0, 1)
        rows.append(CalibrationStats(FINE).update(torch.tensor(conf), torch.tensor(correct)).as_record())
    return torch.stack(rows)


def test_losses_and_threshold_equal_plain_computations(records):
    losses, labelled = selective_losses(records[:50], FINE)
    state = records[:50, : 2 * FINE].reshape(50, 2, FINE)
    j = 37
    assert np.allclose(losses[:, j], (state[:, 0, j:].sum(1) / state.sum((1, 2))).numpy())
    assert (np.diff(losses, axis=1) <= 1e-15).all() and (losses[:, -1] == 0).all()
    n, alpha = 50, 0.1
    plain = next(k for k in range(FINE + 1) if n / (n + 1) * losses[:, k].mean() + 1 / (n + 1) <= alpha)
    assert crc_threshold(losses, alpha) == plain


@pytest.mark.parametrize("alpha", [0.05, 0.1])
def test_risk_is_controlled_over_many_random_splits(records, alpha):
    losses, _ = selective_losses(records, FINE)
    counts = records[:, : 2 * FINE].reshape(-1, 2, FINE).sum(1).double().numpy()
    kept = 1 - np.concatenate([np.zeros((len(counts), 1)), counts.cumsum(1)], 1) / counts.sum(
        1, keepdims=True
    )
    g = np.random.default_rng(1)
    n, risks, coverage_ratios = 500, [], []
    for _ in range(300):
        order = g.permutation(len(losses))
        test = order[n:]
        j = crc_threshold(losses[order[:n]], alpha)
        risks.append(losses[test, j].mean())
        # the best threshold with hindsight: the lowest one whose test risk is <= α
        best = np.flatnonzero(losses[test].mean(0) <= alpha)[0]
        coverage_ratios.append(kept[test, j].mean() / kept[test, best].mean())
    risks = np.array(risks)
    # the goal: coverage within 10 % of the hindsight threshold's, on average over the splits
    assert np.mean(coverage_ratios) >= 0.9, np.mean(coverage_ratios)
    # the mean over overlapping splits is at least as precise as one split over 30 of them
    tol = 4 * risks.std() / np.sqrt(30)
    assert risks.mean() <= alpha + tol
    assert risks.mean() >= alpha - 2 / (n + 1) - tol  # CRC is tight (Thm. 2), not just safe


def test_fit_and_metrics_from_records(records):
    fitted = fit_risk_threshold(records[:500], FINE, 0.1)
    assert fitted["calib_risk"] <= 0.1 and 0 < fitted["calib_abstention"] < 1
    at = selective_metrics(records[500:], FINE, fitted["threshold"])
    assert at["selective_risk"] < 0.13 and at["abstention"] == pytest.approx(
        fitted["calib_abstention"], abs=0.05
    )
    nothing_kept = selective_metrics(records[500:], FINE, 1.0)
    assert nothing_kept == {"selective_risk": 0.0, "abstention": 1.0}


def test_bad_input(records):
    with pytest.raises(ValueError, match="cannot control the risk at α = 0.1: need at least 9"):
        crc_threshold(np.ones((5, 3)), 0.1)
    for alpha in (0, 1, 1.5, True):
        with pytest.raises(ValueError, match=r"α must lie in \(0, 1\)"):
            crc_threshold(np.zeros((5, 3)), alpha)
    with pytest.raises(ValueError, match="not a fine-bin edge"):
        selective_metrics(records[:5], FINE, 0.0025)
    with pytest.raises(ValueError, match="no image has a labelled pixel"):
        selective_losses(torch.zeros(2, 10 * FINE), FINE)
    with pytest.raises(ValueError, match=r"need \(images, 2000\) records"):
        selective_losses(records[:, :100], FINE)
