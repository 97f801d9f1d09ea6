"""Conformal box intervals: quantiles against a plain implementation and against puncc's
SplitBoxWise, the coverage guarantee over many random calibration / test splits, bad input."""

import math

import numpy as np
import pytest
import torch

from conf_plugins.calibration.conformal import (
    BoxConformal,
    conformal_quantiles,
    covered,
    interval_boxes,
    min_pairs,
    nonconformity,
)


def matched_pairs(n, seed=0, correlated=True):
    """Predicted boxes and their GT boxes; errors grow with the box size, and (if
    ``correlated``) the four coordinates' errors share a common factor."""
    g = np.random.default_rng(seed)
    x1, y1 = g.uniform(0, 400, n), g.uniform(0, 300, n)
    w, h = g.uniform(10, 200, n), g.uniform(10, 200, n)
    pred = np.stack([x1, y1, x1 + w, y1 + h], 1)
    common = g.standard_t(4, (n, 1)) if correlated else 0.0
    noise = (0.7 * g.standard_t(4, (n, 4)) + 0.7 * common) * np.stack([w, h, w, h], 1) * 0.05
    return torch.tensor(pred), torch.tensor(pred + noise), torch.tensor(g.integers(0, 3, n))


def test_quantiles_equal_a_plain_order_statistic():
    pred, gt, _ = matched_pairs(37)
    scores = nonconformity(pred, gt, "additive")
    k = math.ceil(38 * (1 - 0.2 / 4))  # the k-th smallest of each coordinate
    expected = torch.stack([torch.sort(scores[:, c]).values[k - 1] for c in range(4)])
    assert torch.equal(conformal_quantiles(scores, 0.2, "bonferroni"), expected)
    q = conformal_quantiles(scores, 0.2, "max_rank")
    ranks = [[int((scores[:, c] < scores[i, c]).sum()) for c in range(4)] for i in range(37)]
    r = sorted(max(row) for row in ranks)[math.ceil(38 * 0.8) - 1]
    assert torch.equal(q, torch.stack([torch.sort(scores[:, c]).values[r] for c in range(4)]))
    assert (q <= conformal_quantiles(scores, 0.2, "bonferroni")).all()  # max-rank is tighter


@pytest.mark.parametrize("score, method", [("additive", "additive"), ("normalised", "multiplicative")])
def test_bonferroni_intervals_equal_punccs_split_box_wise(score, method):
    """puncc scores the signed residual ŷ − y (divided by the predicted width / height for
    'multiplicative'); fed y = p − |g − p| it scores our absolute residual, and its outer box
    is ours (its max-side bounds assume symmetric residuals, hence the absolute ones here)."""
    from deel.puncc.api.prediction import IdPredictor
    from deel.puncc.object_detection import SplitBoxWise

    pred, gt, classes = matched_pairs(300, seed=3)
    test_pred, _, test_classes = matched_pairs(20, seed=4)
    puncc = SplitBoxWise(IdPredictor(), method=method, train=False)
    puncc.fit(X_calib=pred.numpy(), y_calib=(pred - (gt - pred).abs()).numpy())
    _, _, puncc_outer = puncc.predict(test_pred.numpy(), alpha=0.1)
    ours = BoxConformal(3, score, "bonferroni", 0.1, classwise=False).fit(pred, gt, classes)
    _, outer = ours.intervals(test_pred, test_classes)
    assert np.allclose(outer.numpy(), puncc_outer, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("score", ["additive", "normalised"])
@pytest.mark.parametrize("correction", ["bonferroni", "max_rank"])
def test_coverage_holds_over_many_random_splits(score, correction):
    """Split conformal: over random calibration / test splits the mean coverage of the test
    boxes lies in [1 − α, 1 − α + 1/(n + 1)] (up to the spread of the mean over splits);
    Bonferroni is only bounded below jointly, tightly per coordinate."""
    alpha, n_calib, n_test, splits = 0.1, 400, 400, 300
    pred, gt, _ = matched_pairs(n_calib + n_test, seed=7)
    scores = nonconformity(pred, gt, score)
    g = torch.Generator().manual_seed(0)
    joint, per_coordinate = [], []
    for _ in range(splits):
        order = torch.randperm(n_calib + n_test, generator=g)
        calib, test = order[:n_calib], order[n_calib:]
        q = conformal_quantiles(scores[calib], alpha, correction)
        inside = scores[test] <= q
        joint.append(float(inside.all(1).double().mean()))
        per_coordinate.append(inside.double().mean(0))
    joint, per_coordinate = np.array(joint), torch.stack(per_coordinate).mean(0).numpy()
    # the coverage of one split has variance ~ a(1-a)/(n_calib+2) + a(1-a)/n_test; the mean
    # over overlapping splits is at least as precise as one split over 300 / 10 of them
    spread = math.sqrt(alpha * (1 - alpha) * (1 / (n_calib + 2) + 1 / n_test) / (splits / 10))
    tol = 4 * spread
    assert joint.mean() >= 1 - alpha - tol
    if correction == "max_rank":
        assert joint.mean() <= 1 - alpha + 1 / (n_calib + 1) + tol
    else:
        a = alpha / 4
        assert (per_coordinate >= 1 - a - tol).all() and (
            per_coordinate <= 1 - a + 1 / (n_calib + 1) + tol
        ).all()


def test_inner_and_outer_boxes_and_coverage():
    pred = torch.tensor([[10.0, 20.0, 50.0, 80.0]], dtype=torch.float64)
    inner, outer = interval_boxes(pred, torch.tensor([[1.0, 2.0, 3.0, 4.0]]), "normalised")
    assert torch.allclose(inner, torch.tensor([[50.0, 140.0, -70.0, -160.0]], dtype=torch.float64))
    assert torch.allclose(outer, torch.tensor([[-30.0, -100.0, 170.0, 320.0]], dtype=torch.float64))
    inner, outer = interval_boxes(pred, torch.full((1, 4), 5.0), "additive")
    assert covered(torch.tensor([[12.0, 16.0, 54.0, 76.0]]), inner, outer).tolist() == [True]
    assert covered(torch.tensor([[12.0, 14.0, 54.0, 76.0]]), inner, outer).tolist() == [False]


def test_per_class_quantiles_fall_back_to_the_pooled_ones():
    pred, gt, classes = matched_pairs(200, seed=5)
    classes[classes == 2] = 1
    classes[:5] = 2  # 5 pairs: too few for α = 0.1 with Bonferroni (needs 39)
    fitted = BoxConformal(3, "additive", "bonferroni", 0.1).fit(pred, gt, classes)
    assert fitted.pooled.tolist() == [False, False, True]
    assert torch.equal(fitted.quantiles[2], fitted.quantiles[3])
    scores = nonconformity(pred, gt, "additive")
    assert torch.equal(fitted.quantiles[0], conformal_quantiles(scores[classes == 0], 0.1, "bonferroni"))


def test_bad_input_is_a_clear_error():
    pred, gt, classes = matched_pairs(20)
    assert min_pairs(0.1, "bonferroni") == 39 and min_pairs(0.1, "max_rank") == 9
    with pytest.raises(ValueError, match=r"20 matched held-out detections .* α = 0.1: need at least 39"):
        BoxConformal(3, "additive", "bonferroni", 0.1).fit(pred, gt, classes)
    for alpha in (0.0, 1.0, -0.1, True):
        with pytest.raises(ValueError, match=r"α must lie in \(0, 1\)"):
            BoxConformal(3, "additive", "bonferroni", alpha)
    with pytest.raises(ValueError, match="score must be one of"):
        BoxConformal(3, "giou", "bonferroni", 0.1)
    with pytest.raises(ValueError, match="correction must be one of"):
        BoxConformal(3, "additive", "sidak", 0.1)
    with pytest.raises(ValueError, match="NaN or inf"):
        nonconformity(pred.clone().fill_(math.nan), gt, "additive")
    with pytest.raises(ValueError, match=r"need \(N, 4\) predicted and GT boxes"):
        nonconformity(pred[:, :3], gt[:, :3], "additive")
    with pytest.raises(ValueError, match="needs each box's pred_box_std"):
        nonconformity(pred, gt, "std")
    fitted = BoxConformal(3, "additive", "max_rank", 0.2).fit(pred, gt, classes)
    with pytest.raises(RuntimeError, match="no fitted ones"):
        fitted.verify([("w", torch.ones(1))])
    fitted.seal([("w", torch.ones(1))])
    fitted.verify([("w", torch.ones(1))])
    with pytest.raises(RuntimeError, match="stale or mismatched"):
        fitted.verify([("w", torch.zeros(1))])
