"""Conformal risk control of selective prediction: a confidence threshold with a
finite-sample guarantee on the expected per-image risk.

Selective segmentation keeps a pixel's prediction when its confidence is above λ and
abstains otherwise. The loss of image i at λ is the share of its labelled pixels that are
kept *and* wrong, L_i(λ) ∈ [0, 1], non-increasing in λ. Conformal risk control
(Angelopoulos, Bates, Fisch, Lei & Schuster, ICLR 2024, Thm. 1) picks, on n calibration
images exchangeable with the test image,

    λ̂ = inf { λ : n/(n+1) · R̂_n(λ) + B/(n+1) <= α },   R̂_n(λ) = mean_i L_i(λ),  B = 1,

and then E[L_{n+1}(λ̂)] <= α. Candidate thresholds are the fine-bin edges of
:class:`~conf_plugins.calibration.stats.CalibrationStats` (a pixel is kept when its
confidence is above the edge), so the losses come straight from the per-image records the
evaluators already keep (``records_*.pt``): no second pass over the data. The guarantee is
on the mean over images of the per-image risk, not on every image (that would need Learn
then Test, not provided here).
"""

import math

import numpy as np
import torch

from .stats import _STATS


def check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise ValueError(f"the risk level α must lie in (0, 1), got {alpha!r}")
    return float(alpha)


def _dense(records) -> torch.Tensor:
    records = torch.as_tensor(records)
    return (records.to_dense() if records.is_sparse else records).double()


def selective_losses(records, num_fine_bins: int) -> tuple:
    """(losses (m, K + 1), labelled (m,)) of the m images with labelled pixels among n
    per-image :meth:`CalibrationStats.as_record` rows: ``losses[i, j]`` is L_i at threshold
    j / K (keep confidence > j / K; j = K keeps nothing). Images without a labelled pixel
    (every pixel ``ignore_index``) have no risk and are left out; none at all is an error."""
    records = _dense(records)
    expected = len(_STATS) * 2 * num_fine_bins
    if records.dim() != 2 or records.shape[1] != expected:
        raise ValueError(
            f"need (images, {expected}) records of {num_fine_bins} fine bins, got {tuple(records.shape)}"
        )
    counts = records[:, : 2 * num_fine_bins].reshape(-1, 2, num_fine_bins)
    labelled = counts.sum((1, 2))
    counts, labelled = counts[labelled > 0], labelled[labelled > 0]
    if labelled.numel() == 0:
        raise ValueError("no image has a labelled pixel: the selective risk is undefined")
    wrong = counts[:, 0]
    # kept above edge j: the fine bins j .. K-1 (0-based); j = K keeps nothing
    kept_wrong = torch.cat(
        [wrong.flip(1).cumsum(1).flip(1), torch.zeros(len(wrong), 1, dtype=torch.float64)], 1
    )
    return (kept_wrong / labelled[:, None]).numpy(), labelled.numpy()


def crc_threshold(losses: np.ndarray, alpha: float, bound: float = 1.0) -> int:
    """The index j of λ̂ (the smallest candidate with n/(n+1) R̂(λ_j) + B/(n+1) <= α) over
    ``losses`` (n, J) non-increasing along J. ValueError when even the last candidate (keep
    nothing, loss 0) cannot reach α: n < B/α − 1 calibration images."""
    alpha = check_alpha(alpha)
    losses = np.asarray(losses, np.float64)
    n = losses.shape[0]
    if n == 0:
        raise ValueError("conformal risk control needs calibration images; got none")
    adjusted = n / (n + 1) * losses.mean(0) + bound / (n + 1)
    ok = np.flatnonzero(adjusted <= alpha + 1e-12)
    if ok.size == 0:
        needed = math.ceil(bound / alpha - 1)
        raise ValueError(
            f"{n} calibration images cannot control the risk at α = {alpha}: need at least {needed}"
        )
    return int(ok[0])


def fit_risk_threshold(records, num_fine_bins: int, alpha: float) -> dict:
    """λ̂ from per-image records: ``{"threshold", "alpha", "images", "calib_risk",
    "calib_abstention"}`` (risk and abstention of the calibration images at λ̂)."""
    losses, labelled = selective_losses(records, num_fine_bins)
    j = crc_threshold(losses, alpha)
    return {
        "threshold": j / num_fine_bins,
        "alpha": check_alpha(alpha),
        "images": int(losses.shape[0]),
        "unlabelled_images": int(_dense(records).shape[0] - losses.shape[0]),
        "calib_risk": float(losses[:, j].mean()),
        "calib_abstention": float(abstention(records, num_fine_bins, j / num_fine_bins).mean()),
    }


def threshold_index(threshold: float, num_fine_bins: int) -> int:
    j = threshold * num_fine_bins
    if not (0 <= threshold <= 1) or abs(j - round(j)) > 1e-9:
        raise ValueError(f"the threshold {threshold} is not a fine-bin edge of {num_fine_bins} fine bins")
    return int(round(j))


def abstention(records, num_fine_bins: int, threshold: float) -> np.ndarray:
    """(m,) share of each labelled image's labelled pixels at or below ``threshold``
    (abstained), the images of :func:`selective_losses`."""
    counts = _dense(records)[:, : 2 * num_fine_bins].reshape(-1, 2, num_fine_bins).sum(1)
    counts = counts[counts.sum(1) > 0]
    j = threshold_index(threshold, num_fine_bins)
    return (counts[:, :j].sum(1) / counts.sum(1)).numpy()


def selective_metrics(records, num_fine_bins: int, threshold: float) -> dict:
    """``selective_risk`` (mean over images of kept-and-wrong share, what λ̂ controls) and
    ``abstention`` (mean share abstained) at ``threshold``."""
    losses, _ = selective_losses(records, num_fine_bins)
    j = threshold_index(threshold, num_fine_bins)
    return {
        "selective_risk": float(losses[:, j].mean()),
        "abstention": float(abstention(records, num_fine_bins, threshold).mean()),
    }
