"""Detection score calibrators: temperature against a brute-force NLL grid, isotonic against
scikit-learn, Platt against scipy's optimiser, linear against numpy's least squares,
histogram binning against a plain loop (hit and IoU targets, class-wise and pooled),
operating thresholds, the fingerprint."""

import math

import numpy as np
import pytest
import torch
from sklearn.isotonic import IsotonicRegression

from conf_plugins.calibration.detection_stats import DetectionBinStats
from conf_plugins.calibration.score_calibrators import (
    DetectionScoreCalibrator,
    binary_temperature_nll,
    fit_binary_temperature,
    fit_linear,
    fit_platt,
    pool_adjacent_violators,
)


def detections(n=4000, num_classes=3, true_temperature=2.0, seed=0):
    """Logits (n, K+1), each detection's class (its top foreground class) and correctness
    drawn from softmax(z / T*)_c: a model overconfident by T*."""
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(n, num_classes + 1, generator=g, dtype=torch.float64)
    classes = logits[:, :-1].argmax(1)
    p = torch.softmax(logits / true_temperature, 1).gather(1, classes[:, None])[:, 0]
    correct = torch.rand(n, generator=g, dtype=torch.float64) < p
    return logits, classes, correct


def test_temperature_is_the_minimum_of_the_binary_nll_and_recovers_the_true_one():
    logits, classes, correct = detections()
    t = fit_binary_temperature(logits, classes, correct)
    y = correct.double()
    best = binary_temperature_nll(1 / t, logits, classes, y)
    grid = [binary_temperature_nll(1 / s, logits, classes, y) for s in np.geomspace(0.05, 20, 400)]
    assert best <= min(grid) + 1e-9
    assert 1.7 < t < 2.3  # T* = 2 from 4000 Bernoulli draws


def test_temperature_scales_probabilities_as_logits_and_sigmoid_scores_as_two_logits():
    logits, classes, correct = detections(n=500)
    calibrator = DetectionScoreCalibrator("temperature", 3)
    calibrator.log_temperature.fill_(math.log(1.7))
    scaled = calibrator.scale_probabilities(torch.softmax(logits, 1))
    assert torch.allclose(
        scaled, torch.softmax(logits / 1.7, 1), atol=1e-12
    )  # softmax(log p / T) = softmax(z / T)
    # a sigmoid score s = softmax((z, 0))_0: the binary fit and the sigmoid map agree
    z = logits[:, 0]
    two = torch.stack([z, torch.zeros_like(z)], 1)
    t = calibrator.fit_temperature(two, torch.zeros_like(classes), correct).temperature
    expected = torch.softmax(two / t, 1)[:, 0]
    assert torch.allclose(calibrator.scale_sigmoid_scores(torch.sigmoid(z)), expected, atol=1e-6)
    with pytest.raises(ValueError, match="temperature scaling, not isotonic"):
        DetectionScoreCalibrator("isotonic", 3).scale_probabilities(torch.softmax(logits, 1))


def test_binary_nll_equals_a_plain_per_detection_loop():
    logits, classes, correct = detections(n=50)
    beta = 0.7
    reference = 0.0
    for z, c, y in zip(logits, classes, correct):
        p = math.exp(beta * z[c]) / sum(math.exp(beta * v) for v in z)
        reference -= math.log(p) if y else math.log(1 - p)
    assert binary_temperature_nll(beta, logits, classes, correct.double()) == pytest.approx(
        reference / 50, rel=1e-12
    )


@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda z, c, y: (z[:0], c[:0], y[:0]), "no detections"),
        (lambda z, c, y: (z.index_fill(0, torch.tensor([3]), math.nan), c, y), "NaN"),
        (lambda z, c, y: (z, c.fill_(3), y), "classes must be in"),
        (lambda z, c, y: (z, c[:-1], y), "need logits"),
    ],
)
def test_temperature_fit_rejects_bad_input(bad, message):
    with pytest.raises(ValueError, match=message):
        fit_binary_temperature(*bad(*detections(n=20)))


def binned(scores, correct, classes, num_classes, bins):
    stats = DetectionBinStats(num_classes, (bins,))
    stats.update(scores, correct, classes)
    return stats


def random_scores(n=3000, num_classes=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(n, generator=g, dtype=torch.float64)
    classes = torch.randint(0, num_classes, (n,), generator=g)
    correct = torch.rand(n, generator=g, dtype=torch.float64) < scores**2  # overconfident
    return scores, correct, classes


def test_isotonic_equals_scikit_learn_on_the_binned_counts_and_never_reorders_a_class():
    scores, correct, classes = random_scores()
    cal = DetectionScoreCalibrator("isotonic", 3, isotonic_bins=50)
    cal.fit_counts(binned(scores, correct, classes, 3, 50))
    queries = torch.rand(500, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for c in range(3):
        rows = classes == c
        stats = binned(scores[rows], correct[rows], classes[rows] * 0, 1, 50).state
        keep = stats[0, 0] > 0
        x = (stats[1, 0][keep] / stats[0, 0][keep]).numpy()
        y = (stats[2, 0][keep] / stats[0, 0][keep]).numpy()
        reference = (
            IsotonicRegression(out_of_bounds="clip")
            .fit(x, y, sample_weight=stats[0, 0][keep].numpy())
            .predict(queries.numpy())
        )
        ours = cal.calibrate_scores(queries, torch.full((500,), c))
        np.testing.assert_allclose(ours.numpy(), reference, atol=1e-12)
        order = queries.argsort()
        assert (ours[order].diff() >= 0).all()


def test_pool_adjacent_violators_matches_scikit_learn():
    rng = np.random.default_rng(0)
    y, w = rng.random(40), rng.random(40) + 0.1
    reference = IsotonicRegression().fit(np.arange(40), y, sample_weight=w).predict(np.arange(40))
    np.testing.assert_allclose(pool_adjacent_violators(y, w), reference, atol=1e-12)


def test_histogram_binning_is_each_class_bins_accuracy_and_pools_for_an_unseen_class():
    scores, correct, classes = random_scores()
    classes[classes == 2] = 1  # class 2 has no held-out detection
    cal = DetectionScoreCalibrator("histogram", 3, num_bins=10)
    cal.fit_counts(binned(scores, correct, classes, 3, 10))
    for c, pool in ((0, classes == 0), (1, classes == 1), (2, torch.ones_like(correct))):
        for k in range(10):
            in_bin = pool & (scores > k / 10) & (scores <= (k + 1) / 10)
            expected = correct[in_bin].double().mean()
            query = torch.tensor([(k + 0.5) / 10], dtype=torch.float64)
            assert float(cal.calibrate_scores(query, torch.tensor([c]))) == pytest.approx(
                float(expected), abs=1e-12
            )


def test_calibrators_refuse_mismatched_counts_and_empty_fits():
    cal = DetectionScoreCalibrator("histogram", 3, num_bins=10)
    with pytest.raises(ValueError, match="need DetectionBinStats"):
        cal.fit_counts(DetectionBinStats(3, (20,)))
    with pytest.raises(ValueError, match="no held-out detections"):
        cal.fit_counts(DetectionBinStats(3, (10,)))
    with pytest.raises(ValueError, match="one of"):
        DetectionScoreCalibrator("beta", 3)
    with pytest.raises(ValueError, match="target must be one of"):
        DetectionScoreCalibrator("platt", 3, target="giou")
    with pytest.raises(ValueError, match="fit_counts fits histogram / isotonic"):
        DetectionScoreCalibrator("platt", 3).fit_counts(DetectionBinStats(3, (1000,)))
    with pytest.raises(ValueError, match="need >= 2 held-out detections"):
        DetectionScoreCalibrator("linear", 3).fit_sample([0.5], [0], [1.0])
    with pytest.raises(ValueError, match="target must be finite"):
        DetectionScoreCalibrator("platt", 3).fit_sample([0.5, 0.6], [0, 1], [1.0, math.nan])


def test_fingerprint_ties_the_calibrator_to_weights_mode_and_its_own_state():
    weights = [("w", torch.arange(6.0)), ("b", torch.ones(2))]
    cal = DetectionScoreCalibrator("temperature", 3)
    with pytest.raises(RuntimeError, match="no fitted calibrator"):
        cal.verify(weights)
    cal.fit_temperature(*detections(n=200))
    cal.seal(weights, "Heads")
    cal.verify(weights, "Heads")
    state = {k: v.clone() for k, v in cal.state_dict().items()}
    with pytest.raises(RuntimeError, match="stale or mismatched"):
        cal.verify([("w", torch.arange(6.0) + 1e-6), ("b", torch.ones(2))], "Heads")
    with pytest.raises(RuntimeError, match="stale or mismatched"):
        cal.verify(weights, "Heads;samples=10")
    cal.log_temperature.mul_(1.01)  # an edited temperature is no longer the sealed one
    with pytest.raises(RuntimeError, match="stale or mismatched"):
        cal.verify(weights, "Heads")
    cal.load_state_dict(state)
    cal.verify(weights, "Heads")


def scored_detections(n=3000, seed=1):
    """Scores, classes, hits and IoUs of an overconfident detector (IoU 0 when missed)."""
    g = np.random.default_rng(seed)
    scores = g.uniform(0.05, 1.0, n)
    classes = g.integers(0, 3, n)
    hit = g.random(n) < scores**2 * (1 - 0.2 * classes)
    iou = np.where(hit, g.uniform(0.5, 1.0, n), 0.0)
    return scores, classes, hit, iou


@pytest.mark.parametrize("target", ["hit", "iou"])
def test_platt_is_the_minimum_of_the_cross_entropy(target):
    from scipy.optimize import minimize

    scores, _, hit, iou = scored_detections()
    y = hit.astype(float) if target == "hit" else iou
    z = np.log(scores / (1 - scores))

    def loss(w):
        logits = w[0] * z + w[1]
        return float(np.mean(np.logaddexp(0, logits) - y * logits))

    reference = minimize(loss, [1.0, 0.0], method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-14})
    a, b = fit_platt(torch.tensor(scores), torch.tensor(y))
    assert loss([a, b]) <= reference.fun + 1e-10
    assert (a, b) == pytest.approx(tuple(reference.x), abs=1e-4)


def test_platt_never_reverses_and_linear_is_nonnegative_least_squares():
    scores, _, hit, iou = scored_detections()
    m, c = fit_linear(torch.tensor(scores), torch.tensor(iou))
    assert (m, c) == pytest.approx(tuple(np.polyfit(scores, iou, 1)), abs=1e-9)
    falling = torch.tensor(1 - scores)  # a target that falls with the score
    assert fit_linear(torch.tensor(scores), falling)[0] == 0.0
    assert fit_linear(torch.tensor(scores), falling)[1] == pytest.approx(float(falling.mean()))
    a, b = fit_platt(torch.tensor(scores), falling.clamp(0, 1))
    assert a == 0.0 and b == pytest.approx(math.log(float(falling.mean()) / (1 - float(falling.mean()))))


@pytest.mark.parametrize("method", ["platt", "linear", "histogram", "isotonic"])
@pytest.mark.parametrize("classwise", [True, False])
def test_every_post_nms_map_fits_either_target_class_wise_or_pooled(method, classwise):
    scores, classes, hit, iou = scored_detections()
    fitted = {}
    for target in ("hit", "iou"):
        cal = DetectionScoreCalibrator(method, 3, target=target, classwise=classwise)
        y = hit if target == "hit" else iou
        if method in ("platt", "linear"):
            cal.fit_sample(torch.tensor(scores), torch.tensor(classes), torch.tensor(y, dtype=torch.float64))
        else:
            stats = DetectionBinStats(3, (cal.stats_bins(),))
            stats.update(torch.tensor(scores), torch.tensor(hit), torch.tensor(classes), torch.tensor(iou))
            cal.fit_counts(stats)
        query = torch.full((3,), 0.85, dtype=torch.float64)
        fitted[target] = cal.calibrate_scores(query, torch.arange(3))
        if not classwise:  # one map for every class
            assert torch.allclose(fitted[target], fitted[target][0].expand(3))
        # the fitted map predicts its target near a score of 0.85
        near = np.abs(scores - 0.85) < 0.05
        pool = near if not classwise else near & (classes == 0)
        assert float(fitted[target][0]) == pytest.approx(float(np.mean(y[pool])), abs=0.12)
    assert (fitted["iou"] < fitted["hit"]).all()  # IoU of a hit is < 1: the IoU target is lower
    if classwise:
        assert fitted["hit"][0] > fitted["hit"][2]  # class 2 hits less often


def test_operating_thresholds_are_checked_kept_and_sealed():
    cal = DetectionScoreCalibrator("identity", 2)
    assert not cal.has_thresholds
    with pytest.raises(RuntimeError, match="no operating thresholds"):
        cal.keep(torch.tensor([0.5]), torch.tensor([0]))
    with pytest.raises(ValueError, match="need 2 finite thresholds in"):
        cal.set_thresholds([0.3, math.nan])
    cal.set_thresholds([0.3, 0.6])
    scores = torch.tensor([0.31, 0.3, 0.61, 0.6], dtype=torch.float64)  # float32 0.3 is > 0.3
    kept = cal.keep(scores, torch.tensor([0, 0, 1, 1]))
    assert kept.tolist() == [True, False, True, False]
    weights = [("w", torch.ones(3))]
    cal.seal(weights)
    cal.verify(weights)
    cal.thresholds[0] = 0.2  # edited after the fit: stale
    with pytest.raises(RuntimeError, match="stale or mismatched"):
        cal.verify(weights)
    other = DetectionScoreCalibrator("identity", 2, target="iou")
    other.load_state_dict(cal.state_dict())
    other.thresholds[0] = 0.3
    with pytest.raises(RuntimeError, match="stale or mismatched"):  # another target
        other.verify(weights)


def test_logistic_regression_equals_scikit_learn_without_penalty():
    from sklearn.linear_model import LogisticRegression

    from conf_plugins.calibration.logistic import fit_logistic

    g = np.random.default_rng(3)
    X = g.normal(size=(2000, 2))
    y = g.random(2000) < 1 / (1 + np.exp(-(1.5 * X[:, 0] - 0.7 * X[:, 1] + 0.3)))
    ours = fit_logistic(torch.tensor(np.c_[X, np.ones(2000)]), torch.tensor(y, dtype=torch.float64))
    reference = LogisticRegression(penalty=None, tol=1e-10, max_iter=1000).fit(X, y)
    assert ours[:2].numpy() == pytest.approx(reference.coef_[0], abs=1e-5)
    assert float(ours[2]) == pytest.approx(float(reference.intercept_[0]), abs=1e-5)
