"""Conformal class sets: the class-conditional guarantee over many random calibration / test
splits at the rate the theory states, the sets against their definition, bad input."""

import math

import pytest
import torch

from conf_plugins.calibration.class_sets import ClassConformal, ClassSetStats


def detections(n, num_classes=4, seed=0):
    """Probabilities (n, K+1) of an overconfident model and the GT class drawn from a
    softer version of them (so sets must grow beyond the arg-max to cover)."""
    g = torch.Generator().manual_seed(seed)
    logits = 2.5 * torch.randn(n, num_classes + 1, generator=g, dtype=torch.float64)
    truth = torch.softmax(logits[:, :num_classes] / 2.5, 1)
    labels = torch.multinomial(truth, 1, generator=g)[:, 0]
    return torch.softmax(logits, 1), labels


@pytest.mark.parametrize("alpha", [0.1, 0.01])
def test_class_conditional_coverage_holds_over_random_splits_at_the_stated_rate(alpha):
    probs, labels = detections(8000)
    n_calib, splits, num_classes = 4000, 200, 4
    g = torch.Generator().manual_seed(1)
    coverage = torch.zeros(splits, num_classes, dtype=torch.float64)
    counts = torch.zeros(num_classes)
    for s in range(splits):
        order = torch.randperm(len(labels), generator=g)
        calib, test = order[:n_calib], order[n_calib:]
        sets = ClassConformal(num_classes, alpha).fit(probs[calib], labels[calib])
        assert not sets.pooled.any()
        covered = sets.sets(probs[test]).gather(1, labels[test][:, None])[:, 0]
        for c in range(num_classes):
            coverage[s, c] = covered[labels[test] == c].double().mean()
        counts += torch.bincount(labels[calib], minlength=num_classes)
    mean = coverage.mean(0)
    n_c = counts / splits  # held-out detections per class (about)
    # per split the test coverage of class c is a mean of ~n_test_c Bernoullis around a rate in
    # [1 − α, 1 − α + 1/(n_c + 1)]: the mean over the splits lies there within 4 standard errors
    se = coverage.std(0) / math.sqrt(splits)
    assert (mean >= 1 - alpha - 4 * se).all(), (mean, se)
    assert (mean <= 1 - alpha + 1 / (n_c + 1) + 4 * se).all(), (mean, se)


def test_sets_follow_their_definition_and_pool_a_rare_class():
    probs, labels = detections(300, num_classes=3)
    labels[labels == 2] = 0
    labels[:5] = 2  # 5 < 1/0.1 − 1 = 9: class 2 uses the pooled threshold
    sets = ClassConformal(3, 0.1).fit(probs, labels)
    assert sets.pooled.tolist() == [False, False, True]
    scores = (1 - probs[torch.arange(300), labels]).sort().values
    assert sets.thresholds[2] == scores[math.ceil(301 * 0.9) - 1]  # the pooled conformal quantile
    expected = (1 - probs[:, :3]) <= sets.thresholds
    assert torch.equal(sets.sets(probs), expected)
    stats = ClassSetStats().update(expected, torch.ones(300, dtype=torch.bool), labels)
    out = stats.compute()
    assert out["class_set_coverage"] == pytest.approx(
        float(expected[torch.arange(300), labels].double().mean())
    )
    assert out["class_set_size"] == pytest.approx(float(expected.sum(1).double().mean()))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: ClassConformal(3, 1.0), "α must lie in"),
        (lambda: ClassConformal(3, 0.0), "α must lie in"),
        (lambda: ClassConformal(3, 0.01).fit(torch.full((50, 4), 0.25), torch.zeros(50)), "need at least 99"),
        (
            lambda: ClassConformal(3, 0.1).fit(torch.full((20, 4), float("nan")), torch.zeros(20)),
            "NaN or inf",
        ),
        (
            lambda: ClassConformal(3, 0.1).fit(torch.full((20, 4), 0.25), torch.full((20,), 7)),
            "labels must be",
        ),
        (lambda: ClassConformal(3, 0.1).sets(torch.rand(5, 7)), r"need probabilities \(N, 3\)"),
    ],
)
def test_bad_input_is_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
