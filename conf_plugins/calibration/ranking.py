"""Ranking metrics from per-group counts of positives and negatives, groups of tied scores
in descending score (the fine bins of :class:`~.stats.CalibrationStats`); ties are
resolved by their expectation over a random order, as scikit-learn does.

Each function works along the last axis, so a batch of count vectors (e.g. bootstrap
resamples, shape ``(B, groups)``) gives ``B`` values at once; nan where undefined."""

import numpy as np
import torch


def _safe_divide(num, den):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def auroc(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """P(score of a positive > score of a negative) + ½ P(tie); groups in descending score."""
    n_pos, n_neg = pos.sum(-1), neg.sum(-1)
    pos_above = np.cumsum(pos, -1) - pos
    return _safe_divide((neg * (pos_above + 0.5 * pos)).sum(-1), n_pos * n_neg)


def average_precision(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Σ_n (R_n − R_{n−1}) P_n over tie groups in descending score (nan without positives)."""
    n_pos = pos.sum(-1)
    tp, fp = np.cumsum(pos, -1), np.cumsum(neg, -1)
    hit = pos > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        terms = np.where(hit, pos * tp / np.where(hit, tp + fp, 1), 0.0)
    return _safe_divide(terms.sum(-1), n_pos)


def aurc(right: np.ndarray, wrong: np.ndarray) -> np.ndarray:
    """(1/N) Σ_i risk(top i) in descending confidence, expected over orders within ties.

    A group of n samples (w wrong) after C samples (W wrong) adds, by linearity of the
    expected error count W + m·w/n at its m-th sample,
    Σ_{m=1..n} (W + m r)/(C + m) = n r + (W − r C)(ψ(C+n+1) − ψ(C+1)), r = w/n.
    Empty groups add nothing.
    """
    n = right + wrong
    before = np.cumsum(n, -1) - n
    wrong_before = np.cumsum(wrong, -1) - wrong
    r = np.where(n > 0, wrong / np.where(n > 0, n, 1), 0.0)
    digamma = torch.special.digamma
    harmonic = digamma(torch.from_numpy(before + n + 1)) - digamma(torch.from_numpy(before + 1))
    total = (wrong + (wrong_before - r * before) * harmonic.numpy()).sum(-1)
    return _safe_divide(total, n.sum(-1))


def augrc(right: np.ndarray, wrong: np.ndarray) -> np.ndarray:
    """Area under the generalized risk-coverage curve (Traub et al., NeurIPS 2024): the mean
    over coverages k/N of P(wrong and accepted) = (wrong among the top k)/N, expected over
    orders within ties: a group of n (w wrong) after W wrong adds n·W + w(n + 1)/2."""
    n = right + wrong
    wrong_before = np.cumsum(wrong, -1) - wrong
    total = n.sum(-1)
    summed = (n * wrong_before + wrong * (n + 1) / 2).sum(-1)
    return _safe_divide(summed, total * total)


def risk_at_coverage(right: np.ndarray, wrong: np.ndarray, coverage: float) -> np.ndarray:
    """Selective risk (share wrong) of the ⌈coverage · N⌉ most confident predictions, the
    group where that count falls taken by its expected share of wrong ones."""
    n = right + wrong
    total = n.sum(-1, keepdims=True)
    k = np.maximum(np.ceil(coverage * total - 1e-9), 1.0)
    before = np.cumsum(n, -1) - n
    taken = np.clip(k - before, 0, n)  # how much of each group lies within the top k
    share = np.where(n > 0, wrong / np.where(n > 0, n, 1), 0.0)
    return _safe_divide((taken * share).sum(-1), k[..., 0])


def coverage_at_risk(right: np.ndarray, wrong: np.ndarray, risk: float) -> np.ndarray:
    """The largest coverage k/N (k a whole number of predictions) whose selective risk,
    expected over orders within ties as :func:`risk_at_coverage`, is at most ``risk``; 0
    when no coverage is."""
    n = right + wrong
    total = n.sum(-1)
    before = np.cumsum(n, -1) - n
    wrong_before = np.cumsum(wrong, -1) - wrong
    q = np.where(n > 0, wrong / np.where(n > 0, n, 1), 0.0)
    # within a group, risk(k) = (W + (k - C) q) / k <= r  <=>  k (q - r) <= q C - W
    bound = q * before - wrong_before
    slope = q - risk
    with np.errstate(invalid="ignore", divide="ignore"):
        limit = np.where(slope > 0, bound / np.where(slope > 0, slope, 1), np.inf)
        lower = np.where(slope < 0, bound / np.where(slope < 0, slope, -1), -np.inf)
    feasible_all = (slope <= 0) & ((slope < 0) | (bound >= 0))  # from the group's start on
    top = before + n
    best = np.where(
        slope > 0,
        np.where(np.floor(limit + 1e-9) > before, np.minimum(top, np.floor(limit + 1e-9)), -np.inf),
        np.where(feasible_all & (np.maximum(lower, before) <= top), top, -np.inf),
    )
    best = np.where(n > 0, best, -np.inf).max(-1)
    return _safe_divide(np.maximum(best, 0.0), total)


def image_level_aurc(confidence: np.ndarray, risk: np.ndarray, weights: np.ndarray = None) -> np.ndarray:
    """AURC over images (ValUES, Kahl et al., ICLR 2024, image-level aggregation): each
    image one prediction with its aggregated ``confidence`` (I,) and ``risk`` (I,) in [0, 1]
    (e.g. its mean pixel confidence and pixel error rate), ranked by confidence; ``weights``
    (B, I) are how often each image counts (bootstrap resamples), default once: (B,) values."""
    confidence, risk = np.asarray(confidence, np.float64), np.asarray(risk, np.float64)
    weights = np.ones((1, confidence.size)) if weights is None else np.asarray(weights, np.float64)
    order = np.argsort(-confidence, kind="stable")
    w = weights[:, order]
    return aurc(w * (1 - risk[order]), w * risk[order])
