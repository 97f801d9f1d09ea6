"""Split-conformal box intervals with a finite-sample coverage guarantee.

For matched held-out detections (predicted box p, its ground-truth box g, coordinates
x1, y1, x2, y2), the nonconformity score of coordinate k is the absolute residual
|g_k − p_k| divided by a scale s_k of the prediction (Timans et al., ECCV 2024,
"Adaptive Bounding Box Uncertainties via Two-Step Conformal Prediction", their ``abs_res`` /
``norm_res``; Angelopoulos & Bates 2021 for split conformal):

* ``additive``: s_k = 1 (intervals of the same width in pixels for every box);
* ``normalised``: s_k = the predicted box's width (x) or height (y) (wider boxes, wider
  intervals; puncc's ``multiplicative`` with absolute residuals);
* ``std``: s_k = the box's predictive standard deviation under MC dropout
  (``pred_box_std``; zeros replaced by 1, as Timans et al. do).

The interval of coordinate k is p_k ± q_k s_k; the **inner** box (x1 + q s, y1 + q s,
x2 − q s, y2 − q s) and the **outer** box (x1 − q s, ..., x2 + q s, ...) bound the ground-truth
box when all four coordinates lie in their intervals. With n exchangeable calibration
pairs, the four coordinates jointly are covered with probability >= 1 − α by either
correction over the coordinates:

* ``bonferroni``: each coordinate's q_k is its conformal quantile at level α / 4;
* ``max_rank``: rank each coordinate's n scores, take each pair's largest rank of its four,
  the conformal quantile of those maximal ranks gives one rank r, and q_k is coordinate k's
  r-th smallest score (Timans et al.'s ``rank_global``): exact joint coverage (up to
  1/(n+1)), tighter than Bonferroni when the coordinates' errors move together.

The conformal quantile at level a of n scores is the ⌈(n + 1)(1 − a)⌉-th smallest; when that
exceeds n the interval is infinite, so a fit needs n >= 1/a − 1 pairs (else an error naming
n and a). Quantiles per class (classes with too few pairs use the pooled ones) or pooled.
"""

import math

import torch
from torch import nn

from .fingerprint import SealedState

SCORES = ("additive", "normalised", "std")
CORRECTIONS = ("bonferroni", "max_rank")
NUM_COORDINATES = 4


def check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise ValueError(f"the miscoverage level α must lie in (0, 1), got {alpha!r}")
    return float(alpha)


def conformal_rank(n: int, level: float) -> int:
    """⌈(n + 1)(1 − level)⌉: the (1-based) rank of the conformal quantile of n scores."""
    return math.ceil((n + 1) * (1 - level) - 1e-12)


def min_pairs(alpha: float, correction: str) -> int:
    """The fewest calibration pairs that give a finite interval."""
    level = alpha / NUM_COORDINATES if correction == "bonferroni" else alpha
    return max(math.ceil(1 / level - 1 - 1e-12), 1)


def box_scales(pred_boxes: torch.Tensor, score: str, box_std: torch.Tensor = None) -> torch.Tensor:
    """(N, 4) scale s of each coordinate of (N, 4) XYXY predicted boxes for ``score``."""
    pred_boxes = torch.as_tensor(pred_boxes).double()
    if score == "additive":
        return torch.ones_like(pred_boxes)
    if score == "normalised":
        w = (pred_boxes[:, 2] - pred_boxes[:, 0]).clamp_min(1e-6)
        h = (pred_boxes[:, 3] - pred_boxes[:, 1]).clamp_min(1e-6)
        return torch.stack([w, h, w, h], dim=1)
    if score == "std":
        if box_std is None:
            raise ValueError(
                "the 'std' score needs each box's pred_box_std: MC-dropout ROI heads "
                "(MODEL.ROI_HEADS.NAME MCDropoutROIHeads) with MODEL.MC_DROPOUT.OUTPUT_UNCERTAINTY True"
            )
        std = torch.as_tensor(box_std).double().reshape(-1, NUM_COORDINATES)
        return torch.where(std > 0, std, torch.ones_like(std))
    raise ValueError(f"box interval score must be one of {SCORES}, got {score!r}")


def nonconformity(pred_boxes, gt_boxes, score: str, box_std=None) -> torch.Tensor:
    """(N, 4) scores |g − p| / s of matched pairs."""
    pred_boxes, gt_boxes = torch.as_tensor(pred_boxes).double(), torch.as_tensor(gt_boxes).double()
    if pred_boxes.shape != gt_boxes.shape or pred_boxes.dim() != 2 or pred_boxes.shape[1] != NUM_COORDINATES:
        raise ValueError(
            f"need (N, 4) predicted and GT boxes, got {tuple(pred_boxes.shape)} and {tuple(gt_boxes.shape)}"
        )
    if not (torch.isfinite(pred_boxes).all() and torch.isfinite(gt_boxes).all()):
        raise ValueError("boxes contain NaN or inf")
    scales = box_scales(pred_boxes, score, box_std)
    if not torch.isfinite(scales).all():
        raise ValueError("box scales (pred_box_std) contain NaN or inf")
    return (gt_boxes - pred_boxes).abs() / scales


def conformal_quantiles(scores: torch.Tensor, alpha: float, correction: str) -> torch.Tensor:
    """(4,) q of n (n, 4) calibration scores with joint coverage >= 1 − α (see the module)."""
    alpha = check_alpha(alpha)
    if correction not in CORRECTIONS:
        raise ValueError(f"coordinate correction must be one of {CORRECTIONS}, got {correction!r}")
    n = scores.shape[0]
    needed = min_pairs(alpha, correction)
    if n < needed:
        raise ValueError(
            f"{n} matched held-out detections give an infinite {correction} interval at α = {alpha}: "
            f"need at least {needed} (n >= 1/α' − 1, α' = {'α/4' if correction == 'bonferroni' else 'α'})"
        )
    ordered = scores.sort(dim=0).values
    if correction == "bonferroni":
        return ordered[conformal_rank(n, alpha / NUM_COORDINATES) - 1]
    ranks = scores.argsort(dim=0).argsort(dim=0)  # 0-based rank of each score in its coordinate
    max_rank = ranks.max(dim=1).values.sort().values
    rank = int(max_rank[conformal_rank(n, alpha) - 1])
    return ordered[rank]


def interval_boxes(pred_boxes, quantiles, score: str, box_std=None) -> tuple:
    """(inner, outer) (N, 4) boxes of predicted boxes with per-detection quantiles (N, 4)."""
    pred = torch.as_tensor(pred_boxes).double()
    half = torch.as_tensor(quantiles).double() * box_scales(pred, score, box_std)
    sign = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=torch.float64)  # inward for the inner box
    return pred + sign * half, pred - sign * half


def covered(gt_boxes, inner, outer) -> torch.Tensor:
    """(N,) bool: every coordinate of the GT box lies in its interval."""
    gt = torch.as_tensor(gt_boxes).double()
    lo = torch.minimum(inner, outer)
    hi = torch.maximum(inner, outer)
    return ((gt >= lo) & (gt <= hi)).all(dim=1)


class BoxConformal(SealedState, nn.Module):
    """Fitted box-interval quantiles for ``num_classes`` classes held in buffers:
    ``quantiles`` (C + 1, 4), row C the pooled ones (a class without enough pairs uses it),
    ``pooled`` (C,) which classes use it, ``fingerprint`` of the weights and settings."""

    def __init__(self, num_classes: int, score: str, correction: str, alpha: float, classwise: bool = True):
        super().__init__()
        if score not in SCORES:
            raise ValueError(f"box interval score must be one of {SCORES}, got {score!r}")
        if correction not in CORRECTIONS:
            raise ValueError(f"coordinate correction must be one of {CORRECTIONS}, got {correction!r}")
        self.num_classes, self.score, self.correction = int(num_classes), score, correction
        self.alpha, self.classwise = check_alpha(alpha), bool(classwise)
        self.register_buffer(
            "quantiles", torch.full((num_classes + 1, NUM_COORDINATES), math.nan, dtype=torch.float64)
        )
        self.register_buffer("pooled", torch.ones(num_classes, dtype=torch.bool))
        self.register_buffer("fingerprint", torch.zeros(32, dtype=torch.uint8))

    @property
    def settings(self) -> str:
        scope = "classwise" if self.classwise else "pooled"
        return f"box_conformal:{self.score}:{self.correction}:{self.alpha!r}:{scope}"

    @torch.no_grad()
    def fit(self, pred_boxes, gt_boxes, classes, box_std=None) -> "BoxConformal":
        """Quantiles from matched held-out pairs (pred (N, 4), GT (N, 4), class (N,))."""
        scores = nonconformity(pred_boxes, gt_boxes, self.score, box_std)
        classes = torch.as_tensor(classes).long().reshape(-1)
        if classes.numel() != scores.shape[0]:
            raise ValueError("boxes and classes differ in length")
        self.quantiles[self.num_classes] = conformal_quantiles(scores, self.alpha, self.correction)
        self.pooled.fill_(True)
        if self.classwise:
            needed = min_pairs(self.alpha, self.correction)
            for c in range(self.num_classes):
                rows = classes == c
                if int(rows.sum()) >= needed:
                    self.quantiles[c] = conformal_quantiles(scores[rows], self.alpha, self.correction)
                    self.pooled[c] = False
        self.quantiles[: self.num_classes][self.pooled] = self.quantiles[self.num_classes]
        return self

    def intervals(self, pred_boxes, classes, box_std=None) -> tuple:
        """(inner, outer) boxes of detections of ``classes``."""
        q = self.quantiles.cpu()[torch.as_tensor(classes).long().cpu()]  # buffers may sit on a GPU
        std = None if box_std is None else torch.as_tensor(box_std).detach().cpu()
        return interval_boxes(torch.as_tensor(pred_boxes).detach().cpu(), q, self.score, std)

    def verify(self, named_weights, signature: str = ""):
        """RuntimeError unless fitted for exactly these weights, settings and state."""
        self.check_sealed(
            named_weights,
            signature,
            missing="MODEL.CALIBRATION.BOX_CONFORMAL.SCORE asks for box intervals but the loaded weights "
            "hold no fitted ones: fit them with tools/fit_detection_calibration.py and load its checkpoint",
            stale="the box intervals in these weights were fitted for other weights or other BOX_CONFORMAL "
            "settings (score / correction / alpha / scope): stale or mismatched; refit them with "
            "tools/fit_detection_calibration.py",
        )


class IntervalStats:
    """Coverage of matched ground-truth boxes by box intervals, mergeable: counts of matched
    detections and of covered ones, Σ mean interval width (pixels, over the 4 coordinates)
    and Σ (outer area − inner area) (the inner box clipped at empty)."""

    def __init__(self):
        self.state = torch.zeros(4, dtype=torch.float64)  # matched, covered, Σ width, Σ area

    def update(self, gt_boxes, inner, outer) -> "IntervalStats":
        gt, inner, outer = (
            torch.as_tensor(b).double().reshape(-1, NUM_COORDINATES) for b in (gt_boxes, inner, outer)
        )
        if not (gt.shape == inner.shape == outer.shape):
            raise ValueError("GT, inner and outer boxes differ in shape")
        if gt.shape[0] == 0:
            return self
        width = (outer - inner).abs().mean(dim=1)
        outer_area = (outer[:, 2] - outer[:, 0]).clamp_min(0) * (outer[:, 3] - outer[:, 1]).clamp_min(0)
        inner_area = (inner[:, 2] - inner[:, 0]).clamp_min(0) * (inner[:, 3] - inner[:, 1]).clamp_min(0)
        self.state += torch.stack(
            [
                torch.tensor(float(gt.shape[0]), dtype=torch.float64),
                covered(gt, inner, outer).double().sum(),
                width.sum(),
                (outer_area - inner_area).sum(),
            ]
        )
        return self

    def merge(self, other: "IntervalStats") -> "IntervalStats":
        self.state += other.state
        return self

    def all_reduce(self, group=None) -> "IntervalStats":
        from .reduce import sum_over_ranks

        flat = sum_over_ranks(self.state, group)
        if flat is not None:
            self.state.copy_(flat)
        return self

    def compute(self) -> dict:
        """``box_coverage``, ``box_interval_width``, ``box_interval_area`` (nan without
        matched detections) and ``box_matched``."""
        n = float(self.state[0])
        if n == 0:
            return {
                "box_coverage": math.nan,
                "box_interval_width": math.nan,
                "box_interval_area": math.nan,
                "box_matched": 0.0,
            }
        return {
            "box_coverage": float(self.state[1]) / n,
            "box_interval_width": float(self.state[2]) / n,
            "box_interval_area": float(self.state[3]) / n,
            "box_matched": n,
        }
