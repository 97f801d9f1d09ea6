"""Localisation-Recall-Precision (LRP) error and LRP-optimal per-class score thresholds.

LRP (Oksuz et al., "One Metric to Measure them All: Localisation Recall Precision (LRP) for
Evaluating Visual Detection Tasks", TPAMI 2021, eq. 5) of the detections of one class kept
at a score threshold, with TP IoU threshold τ:

    LRP = ( Σ_TP (1 − IoU_i) / (1 − τ) + N_FP + N_FN ) / ( N_TP + N_FP + N_FN )

and its components: localisation Σ_TP (1 − IoU_i) / N_TP, false positives
N_FP / (N_TP + N_FP) = 1 − precision, false negatives N_FN / N_GT = 1 − recall. The
**LRP-optimal** threshold of a class minimises its LRP over the thresholds; oLRP is the
mean of the minima over the classes with ground truth (Kuzucu et al., ECCV 2024, choose the
detector's operating thresholds this way on held-out data, then calibrate and evaluate the
detections kept). A class with ground truth but no detection has LRP 1.

Streaming and mergeable: per (class, score bin) the number of detections, of true
positives and Σ (1 − IoU) over them, and per class the number of GT boxes (crowd regions
excluded; detections on them are ignored as in the matching). Greedy matching in score
order makes a detection's TP status independent of the threshold, so the curve over
thresholds is a reverse cumulative sum. Candidate thresholds are the bin edges t_j = j / K
(K = ``num_bins``): threshold t_j keeps the bins ((k−1)/K, k/K] above it, i.e. the scores
> t_j (0 itself counts as kept at t_0); among equal minima the highest threshold is taken
(the same detections are kept inside a plateau; a class whose LRP is 1 at every threshold,
no true positive, then keeps none of its false positives).
"""

import math

import numpy as np
import torch

from .binning import bin_index
from .bootstrap import sparse_rows
from .reduce import sum_over_ranks

DEFAULT_LRP_BINS = 200  # threshold candidates every 0.005
DEFAULT_TP_IOU = 0.5  # τ of the LRP paper
METRIC_NAMES = ("LRP", "LRP_loc", "LRP_FP", "LRP_FN", "oLRP", "oLRP_loc", "oLRP_FP", "oLRP_FN")
_SUMS = ("count", "tp", "one_minus_iou")


class LRPStats:
    """Sums for LRP curves: ``state`` (3, classes, K) — detections, true positives,
    Σ (1 − IoU) of the true positives per (class, score bin) — and ``num_gt`` (classes,)."""

    def __init__(self, num_classes: int, num_bins: int = DEFAULT_LRP_BINS, tp_iou: float = DEFAULT_TP_IOU):
        if num_classes < 1 or num_bins < 1:
            raise ValueError(f"need >= 1 class and >= 1 score bin, got {num_classes}, {num_bins}")
        if not 0 <= tp_iou < 1:
            raise ValueError(f"the TP IoU threshold τ must lie in [0, 1), got {tp_iou}")
        self.num_classes, self.num_bins, self.tp_iou = int(num_classes), int(num_bins), float(tp_iou)
        self.state = torch.zeros(len(_SUMS), self.num_classes, self.num_bins, dtype=torch.float64)
        self.num_gt = torch.zeros(self.num_classes, dtype=torch.float64)

    # -- accumulation ------------------------------------------------------------------
    def _cells(self, scores, correct, classes, iou):
        scores = torch.as_tensor(scores).double().reshape(-1)
        correct = torch.as_tensor(correct).reshape(-1).bool()
        classes = torch.as_tensor(classes).long().reshape(-1)
        iou = torch.as_tensor(iou).double().reshape(-1)
        n = scores.numel()
        if not (correct.numel() == classes.numel() == iou.numel() == n):
            raise ValueError("scores, correct, classes and iou differ in length")
        if not (torch.isfinite(scores).all() and ((scores >= 0) & (scores <= 1)).all()):
            raise ValueError("scores must be finite and in [0, 1]")
        if not (torch.isfinite(iou).all() and ((iou >= 0) & (iou <= 1)).all()):
            raise ValueError("iou must be finite and in [0, 1]")
        if n and (classes.min() < 0 or classes.max() >= self.num_classes):
            raise ValueError(f"class indices must be in [0, {self.num_classes})")
        flat = classes * self.num_bins + bin_index(scores, self.num_bins)
        tp = correct.double()
        return flat, [torch.ones(n, dtype=torch.float64), tp, tp * (1 - iou)]

    def update(self, scores, correct, classes, iou) -> "LRPStats":
        """Add detections (ignored ones left out): score (N,) in [0, 1], ``correct`` (N,)
        true positive at τ, class (N,), IoU (N,) with the matched GT box."""
        flat, weights = self._cells(scores, correct, classes, iou)
        for row, weight in enumerate(weights):
            self.state[row].view(-1).index_add_(0, flat, weight)
        return self

    def add_ground_truth(self, classes) -> "LRPStats":
        """Count GT boxes (not crowd regions) of ``classes`` (G,)."""
        classes = torch.as_tensor(classes).long().reshape(-1)
        if classes.numel() and (classes.min() < 0 or classes.max() >= self.num_classes):
            raise ValueError(f"GT class indices must be in [0, {self.num_classes})")
        self.num_gt += torch.bincount(classes, minlength=self.num_classes).double()
        return self

    def records_by_image(
        self, images, num_images: int, scores, correct, classes, iou, gt_images, gt_classes
    ) -> torch.Tensor:
        """Per-image rows (sparse, not coalesced) of :meth:`as_record`: detections of image
        ``images[i]``, GT boxes of ``gt_images[g]``; nothing is accumulated into ``self``."""
        flat, weights = self._cells(scores, correct, classes, iou)
        size = self.state.numel()
        images = torch.as_tensor(images).long().reshape(-1)
        gt_images = torch.as_tensor(gt_images).long().reshape(-1)
        gt_classes = torch.as_tensor(gt_classes).long().reshape(-1)
        rows = torch.cat([images.repeat(len(weights)), gt_images])
        cols = torch.cat(
            [flat + r * self.state[0].numel() for r in range(len(weights))] + [size + gt_classes]
        )
        values = torch.cat([*weights, torch.ones(gt_classes.numel(), dtype=torch.float64)])
        return sparse_rows(rows, cols, values, (num_images, size + self.num_classes), coalesce=False)

    @property
    def record_size(self) -> int:
        """Columns of an :meth:`as_record` / :meth:`records_by_image` row."""
        return self.state.numel() + self.num_classes

    def summaries(self, totals=None) -> tuple:
        """The whole record is the summary (see :meth:`StatsRecordMetrics.summaries`)."""
        return [(torch.arange(self.record_size), self.record_size)], lambda sums: self.metrics_of_records(
            sums[0]
        )

    def as_record(self) -> torch.Tensor:
        return torch.cat([self.state.reshape(-1), self.num_gt])

    def merge(self, other: "LRPStats") -> "LRPStats":
        if (other.num_classes, other.num_bins, other.tp_iou) != (
            self.num_classes,
            self.num_bins,
            self.tp_iou,
        ):
            raise ValueError("cannot merge LRP statistics of different classes / bins / τ")
        self.state += other.state
        self.num_gt += other.num_gt
        return self

    def all_reduce(self, group=None) -> "LRPStats":
        """Sum over the ranks of ``group`` (no-op without torch.distributed)."""
        flat = sum_over_ranks(self.as_record(), group)
        if flat is not None:
            self.state.copy_(flat[: self.state.numel()].view_as(self.state))
            self.num_gt.copy_(flat[self.state.numel() :])
        return self

    # -- metrics -----------------------------------------------------------------------
    def compute(self) -> dict:
        """LRP of every returned detection (threshold 0) and oLRP, each with its
        components, means over the classes with ground truth (nan without any)."""
        return {k: float(v[0]) for k, v in self.metrics_of_records(self.as_record()[None]).items()}

    def metrics_of_records(self, records) -> dict:
        """:meth:`compute` of a batch of summed :meth:`as_record` rows ``(B, S)``: ``{name: (B,)}``."""
        records = np.asarray(records.numpy() if isinstance(records, torch.Tensor) else records, np.float64)
        B, size = records.shape[0], self.state.numel()
        state = records[:, :size].reshape(B, len(_SUMS), self.num_classes, self.num_bins)
        return lrp_metrics(state, records[:, size:], self.tp_iou)

    def per_class(self) -> dict:
        """Per class: ``oLRP``, its components and the LRP-optimal ``threshold`` (nan for a
        class without ground truth), ``detections`` and ``gt`` counts."""
        curves = lrp_curves(self.state.numpy()[None], self.num_gt.numpy()[None], self.tp_iou)
        best = _optimum(curves)
        return {
            "oLRP": best["lrp"][0],
            "oLRP_loc": best["loc"][0],
            "oLRP_FP": best["fp"][0],
            "oLRP_FN": best["fn"][0],
            "threshold": best["threshold"][0] / self.num_bins,
            "detections": self.state[0].sum(1).numpy(),
            "gt": self.num_gt.numpy(),
        }

    def pooled_threshold(self) -> float:
        """The LRP-optimal threshold of every class's detections and GT pooled."""
        curves = lrp_curves(
            self.state.sum(1, keepdim=True).numpy()[None], self.num_gt.sum()[None, None].numpy(), self.tp_iou
        )
        threshold = _optimum(curves)["threshold"][0, 0]
        if math.isnan(threshold):
            raise ValueError("no ground truth: LRP-optimal thresholds are undefined")
        return float(threshold) / self.num_bins

    def operating_thresholds(self, min_detections: int = 10) -> tuple:
        """``(thresholds (classes,), pooled (classes,) bool)``: each class's LRP-optimal
        threshold, or the pooled one (:meth:`pooled_threshold`) for a class with fewer than
        ``min_detections`` detections or without ground truth."""
        if min_detections < 1:
            raise ValueError(f"min_detections must be >= 1, got {min_detections}")
        per_class = self.per_class()
        pooled = (per_class["detections"] < min_detections) | (per_class["gt"] == 0)
        thresholds = np.where(pooled, self.pooled_threshold(), per_class["threshold"])
        return torch.as_tensor(thresholds, dtype=torch.float64), torch.as_tensor(pooled)

    def state_dict(self) -> dict:
        return {
            "num_classes": self.num_classes,
            "num_bins": self.num_bins,
            "tp_iou": self.tp_iou,
            "state": self.state.clone(),
            "num_gt": self.num_gt.clone(),
        }


def _kept(state: np.ndarray) -> np.ndarray:
    """Σ over the bins >= j of ``state`` (..., K): what threshold index j keeps."""
    return np.flip(np.cumsum(np.flip(state, -1), -1), -1)


def _lrp(count, tp, one_minus_iou, gt, tp_iou):
    fp, fn = count - tp, gt - tp
    total = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        lrp = np.where(
            total > 0, (one_minus_iou / (1 - tp_iou) + fp + fn) / np.where(total > 0, total, 1), np.nan
        )
    return np.where(gt > 0, lrp, np.nan)


def _components(count, tp, one_minus_iou, gt):
    """loc, fp, fn components (nan where undefined) of kept sums (any matching shapes)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "loc": np.where((tp > 0) & (gt > 0), one_minus_iou / np.where(tp > 0, tp, 1), np.nan),
            "fp": np.where((count > 0) & (gt > 0), (count - tp) / np.where(count > 0, count, 1), np.nan),
            "fn": np.where(gt > 0, (gt - tp) / np.where(gt > 0, gt, 1), np.nan),
        }


def lrp_curves(state: np.ndarray, num_gt: np.ndarray, tp_iou: float) -> dict:
    """Per threshold index j (keep the bins >= j) of ``state`` (B, 3, C, K) and ``num_gt``
    (B, C): ``lrp``, ``loc``, ``fp``, ``fn`` (B, C, K) and ``num_gt``; nan where undefined."""
    kept = _kept(state)
    gt = num_gt[:, :, None]
    return {
        "lrp": _lrp(kept[:, 0], kept[:, 1], kept[:, 2], gt, tp_iou),
        **_components(kept[:, 0], kept[:, 1], kept[:, 2], gt),
        "num_gt": num_gt,
    }


def _optimum(curves: dict) -> dict:
    """Per (B, C): the LRP-optimal threshold index (highest among equal minima; nan without
    ground truth) and the curves' values there."""
    lrp = curves["lrp"]
    has_gt = curves["num_gt"] > 0
    flipped = np.where(np.isnan(lrp), np.inf, lrp)[..., ::-1]
    j = lrp.shape[-1] - 1 - np.argmin(flipped, axis=-1)  # the last minimum
    pick = lambda a: np.take_along_axis(a, j[..., None], -1)[..., 0]  # noqa: E731
    out = {name: np.where(has_gt, pick(curves[name]), np.nan) for name in ("lrp", "loc", "fp", "fn")}
    out["threshold"] = np.where(has_gt, j.astype(np.float64), np.nan)
    return out


def lrp_metrics(state: np.ndarray, num_gt: np.ndarray, tp_iou: float) -> dict:
    """LRP at threshold 0 (every detection as returned) and oLRP, with components, as
    means over the classes with ground truth: ``{name: (B,)}``. The LRP curve alone is
    computed over the thresholds; the components only where they are reported."""
    kept = _kept(state)  # (B, 3, C, K)
    gt = num_gt[:, :, None]
    lrp = _lrp(kept[:, 0], kept[:, 1], kept[:, 2], gt, tp_iou)
    has_gt = num_gt > 0
    j = lrp.shape[-1] - 1 - np.argmin(np.where(np.isnan(lrp), np.inf, lrp)[..., ::-1], axis=-1)
    at = lambda a, index: np.take_along_axis(a, index[..., None], -1)[..., 0]  # noqa: E731
    zero = np.zeros_like(j)
    points = {}
    for prefix, index in (("LRP", zero), ("oLRP", j)):
        sums = [at(kept[:, r], index) for r in range(3)]
        values = {"lrp": np.where(has_gt, at(lrp, index), np.nan), **_components(*sums, num_gt)}
        points[prefix] = values
    out = {}
    with np.errstate(invalid="ignore"), _quiet_nanmean():
        for prefix, values in points.items():
            out[prefix] = np.nanmean(values["lrp"], -1)
            for part in ("loc", "fp", "fn"):
                out[f"{prefix}_{part if part == 'loc' else part.upper()}"] = np.nanmean(values[part], -1)
    return out


class _quiet_nanmean:
    """np.nanmean of an all-nan row is nan by definition here: no RuntimeWarning."""

    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)

    def __exit__(self, *exc):
        return self._catch.__exit__(*exc)
