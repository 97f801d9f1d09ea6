"""AUGRC, risk at coverage, coverage at risk and the equal-mass adaptive ECE against plain
per-sample implementations (distinct confidences), and ties against the average over every
order of the tied samples."""

import itertools

import numpy as np
import pytest
import torch

from conf_plugins.calibration import CalibrationStats
from conf_plugins.calibration.ranking import augrc, coverage_at_risk, risk_at_coverage


def plain_curve(conf, correct):
    """Selective risk of the top k, k = 1..N, in descending confidence."""
    order = np.argsort(-conf, kind="stable")
    wrong = np.cumsum(~correct[order])
    return wrong / np.arange(1, len(conf) + 1), wrong / len(conf)


def grouped(conf, correct):
    """(right, wrong) per distinct confidence, in descending confidence."""
    values = np.unique(conf)[::-1]
    right = np.array([[np.sum((conf == v) & correct) for v in values]], dtype=float)
    wrong = np.array([[np.sum((conf == v) & ~correct) for v in values]], dtype=float)
    return right, wrong


def test_distinct_confidences_equal_the_plain_curves():
    g = np.random.default_rng(0)
    conf = g.permutation(np.linspace(0.01, 0.99, 200))
    correct = g.random(200) < conf
    risk, generalized = plain_curve(conf, correct)
    right, wrong = grouped(conf, correct)
    assert augrc(right, wrong)[0] == pytest.approx(generalized.mean(), abs=1e-12)
    for c in (0.1, 0.5, 0.8, 1.0):
        k = int(np.ceil(c * 200))
        assert risk_at_coverage(right, wrong, c)[0] == pytest.approx(risk[k - 1], abs=1e-12)
    for r in (0.0, 0.05, 0.2, 0.5, 1.0):
        feasible = np.flatnonzero(risk <= r + 1e-12)
        expected = (feasible.max() + 1) / 200 if feasible.size else 0.0
        assert coverage_at_risk(right, wrong, r)[0] == pytest.approx(expected, abs=1e-12), r


def test_ties_are_the_average_over_orders():
    conf = np.array([0.9, 0.9, 0.9, 0.6, 0.6, 0.3])
    correct = np.array([True, False, True, False, True, False])
    right, wrong = grouped(conf, correct)
    curves = []
    for perm_a in itertools.permutations(range(3)):
        for perm_b in itertools.permutations(range(3, 5)):
            order = list(perm_a) + list(perm_b) + [5]
            curves.append(plain_curve(np.arange(6, 0, -1.0), correct[order]))
    mean_risk = np.mean([c[0] for c in curves], axis=0)
    mean_generalized = np.mean([c[1] for c in curves], axis=0)
    assert augrc(right, wrong)[0] == pytest.approx(mean_generalized.mean(), abs=1e-12)
    for k in range(1, 7):
        assert risk_at_coverage(right, wrong, k / 6)[0] == pytest.approx(mean_risk[k - 1], abs=1e-12)
    for r in (0.2, 1 / 3, 0.4, 0.5):
        feasible = np.flatnonzero(mean_risk <= r + 1e-12)
        expected = (feasible.max() + 1) / 6 if feasible.size else 0.0
        assert coverage_at_risk(right, wrong, r)[0] == pytest.approx(expected, abs=1e-12), r


def test_adaptive_ece_is_the_ece_of_equal_mass_bins():
    g = np.random.default_rng(1)
    conf = np.round(g.random(1000) * 6000) / 6000  # on fine-bin edges: no fine bin is split
    conf = np.clip(conf, 1 / 6000, 1.0)
    correct = g.random(1000) < conf**2
    stats = CalibrationStats().update(torch.tensor(conf), torch.tensor(correct))
    got = stats.compute(num_bins=10)["adaptive_ECE"]
    order = np.argsort(conf, kind="stable")
    sorted_conf, sorted_correct = conf[order], correct[order]
    # equal-mass bins: whole groups of equal confidence, a group joining the bin of its start
    start = {v: int(np.searchsorted(sorted_conf, v)) for v in np.unique(conf)}
    bins = np.array([min(int(10 * start[v] / 1000), 9) for v in sorted_conf])
    expected = (
        sum(abs(sorted_correct[bins == b].sum() - sorted_conf[bins == b].sum()) for b in range(10)) / 1000
    )
    assert got == pytest.approx(expected, abs=1e-9)
    sizes = np.bincount(bins, minlength=10)
    assert sizes.min() > 50 and sizes.max() < 150  # about N / 10 each


def test_levels_are_configurable_and_checked():
    g = np.random.default_rng(2)
    conf = g.random(500)
    correct = g.random(500) < conf
    stats = CalibrationStats().update(torch.tensor(conf), torch.tensor(correct))
    risk, _ = plain_curve(conf, correct)
    got = stats.compute(coverage=0.5, risk=0.2)
    assert got["risk_at_coverage"] == pytest.approx(risk[249], abs=2e-3)  # fine-bin ties
    assert got["risk_at_coverage"] < stats.compute()["risk_at_coverage"]  # 50 % is safer than 80 %
    assert got["coverage_at_risk"] > stats.compute()["coverage_at_risk"]  # 20 % allows more than 5 %
    for bad in (0.0, 1.5, True):
        with pytest.raises(ValueError, match=r"coverage must lie in \(0, 1\]"):
            stats.compute(coverage=bad)
