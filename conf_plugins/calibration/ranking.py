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
