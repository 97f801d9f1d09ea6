"""Conformal class-label sets per detection, class-conditional (ClassThr).

For matched held-out detections (a detection matched to a ground-truth box by IoU, whatever
its predicted class) with class-probability vector p and the GT class y, the nonconformity
score is 1 − p_y. Class-conditional split conformal (Timans et al., ECCV 2024, "Adaptive
Bounding Box Uncertainties via Two-Step Conformal Prediction", their ClassThr; Vovk's
Mondrian conformal): per class c, q_c is the ⌈(n_c + 1)(1 − α)⌉-th smallest score of the n_c
held-out detections whose GT class is c, and a detection's set is {k : 1 − p_k ≤ q_k}. For a
new detection of true class c, exchangeable with those n_c,

    1 − α ≤ P(c ∈ set | y = c) ≤ 1 − α + 1 / (n_c + 1).

A class with fewer than ⌈1/α − 1⌉ held-out detections (its quantile would be infinite) uses
the pooled quantile over all classes, which guarantees the coverage only marginally; which
classes did is recorded in ``pooled``. Probability vectors of K + 1 entries (background last)
give sets over the K foreground classes.
"""

import torch
from torch import nn

from .conformal import check_alpha, conformal_rank, min_pairs
from .fingerprint import SealedState


def class_scores(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N,) nonconformity 1 − p_y of (N, K or K+1) probabilities and (N,) GT classes."""
    probs = torch.as_tensor(probs).double()
    labels = torch.as_tensor(labels).long().reshape(-1)
    if probs.dim() != 2 or probs.shape[0] != labels.numel():
        raise ValueError(
            f"need probabilities (N, K) and labels (N,), got {tuple(probs.shape)}, {tuple(labels.shape)}"
        )
    if not torch.isfinite(probs).all():
        raise ValueError("class probabilities contain NaN or inf")
    if labels.numel() and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise ValueError(
            f"labels must be classes in [0, {probs.shape[1]}), got [{labels.min()}, {labels.max()}]"
        )
    return 1 - probs.gather(1, labels[:, None])[:, 0]


class ClassConformal(SealedState, nn.Module):
    """Fitted class-conditional thresholds for ``num_classes`` foreground classes held in
    buffers: ``thresholds`` (K,) on 1 − p, ``pooled`` (K,) which classes use the pooled one,
    ``fingerprint`` of the weights and settings."""

    def __init__(self, num_classes: int, alpha: float):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes, self.alpha = int(num_classes), check_alpha(alpha)
        self.register_buffer("thresholds", torch.full((num_classes,), float("nan"), dtype=torch.float64))
        self.register_buffer("pooled", torch.ones(num_classes, dtype=torch.bool))
        self.register_buffer("fingerprint", torch.zeros(32, dtype=torch.uint8))

    @property
    def settings(self) -> str:
        return f"class_sets:{self.alpha!r}"

    def _quantile(self, scores: torch.Tensor) -> torch.Tensor:
        return scores.sort().values[conformal_rank(scores.numel(), self.alpha) - 1]

    @torch.no_grad()
    def fit(self, probs, labels) -> "ClassConformal":
        """Thresholds from matched held-out detections: probabilities (N, K or K+1), GT class (N,)."""
        scores = class_scores(probs, labels)
        labels = torch.as_tensor(labels).long().reshape(-1)
        needed = min_pairs(self.alpha, "max_rank")
        if scores.numel() < needed:
            raise ValueError(
                f"{scores.numel()} matched held-out detections give an infinite class set at "
                f"α = {self.alpha}: need at least {needed} (n >= 1/α − 1)"
            )
        self.thresholds.fill_(float(self._quantile(scores)))
        self.pooled.fill_(True)
        for c in range(self.num_classes):
            rows = labels == c
            if int(rows.sum()) >= needed:
                self.thresholds[c] = self._quantile(scores[rows])
                self.pooled[c] = False
        return self

    def sets(self, probs: torch.Tensor) -> torch.Tensor:
        """(N, K) bool: class k is in a detection's set when 1 − p_k <= q_k."""
        probs = torch.as_tensor(probs)
        if probs.dim() != 2 or probs.shape[1] not in (self.num_classes, self.num_classes + 1):
            raise ValueError(f"need probabilities (N, {self.num_classes}) or (N, {self.num_classes + 1})")
        foreground = probs[:, : self.num_classes].double()
        return (1 - foreground) <= self.thresholds.to(foreground.device)

    def verify(self, named_weights, signature: str = ""):
        """RuntimeError unless fitted for exactly these weights, settings and state."""
        self.check_sealed(
            named_weights,
            signature,
            missing="MODEL.CALIBRATION.CLASS_SETS asks for class sets but the loaded weights hold no fitted "
            "ones: fit them with tools/fit_detection_calibration.py and load its checkpoint",
            stale="the class sets in these weights were fitted for other weights or another α: stale or "
            "mismatched; refit them with tools/fit_detection_calibration.py",
        )


class ClassSetStats:
    """Coverage of matched detections' GT classes by their sets, mergeable: matched
    detections, covered ones, Σ set size of the matched, detections, Σ set size of all."""

    def __init__(self):
        self.state = torch.zeros(5, dtype=torch.float64)

    def update(self, sets: torch.Tensor, matched: torch.Tensor, labels: torch.Tensor) -> "ClassSetStats":
        """``sets`` (N, K) bool of N detections, ``matched`` (N,) bool, ``labels`` (N,) the GT
        class of each matched one (any value where unmatched)."""
        sets, matched = torch.as_tensor(sets).bool(), torch.as_tensor(matched).bool().reshape(-1)
        labels = torch.as_tensor(labels).long().reshape(-1)
        if not (sets.dim() == 2 and sets.shape[0] == matched.numel() == labels.numel()):
            raise ValueError("sets, matched and labels differ in length")
        size = sets.sum(1).double()
        hit = sets[matched].gather(1, labels[matched][:, None])[:, 0] if matched.any() else sets.new_zeros(0)
        self.state += torch.tensor(
            [
                float(matched.sum()),
                float(hit.sum()),
                float(size[matched].sum()),
                float(len(size)),
                float(size.sum()),
            ],
            dtype=torch.float64,
        )
        return self

    def merge(self, other: "ClassSetStats") -> "ClassSetStats":
        self.state += other.state
        return self

    def all_reduce(self, group=None) -> "ClassSetStats":
        from .reduce import sum_over_ranks

        flat = sum_over_ranks(self.state, group)
        if flat is not None:
            self.state.copy_(flat)
        return self

    def compute(self) -> dict:
        """``class_set_coverage`` and ``class_set_size`` over the matched detections (nan
        without any), ``class_set_size_all`` over every detection."""
        matched, covered, size, n, size_all = (float(v) for v in self.state)
        nan = float("nan")
        return {
            "class_set_coverage": covered / matched if matched else nan,
            "class_set_size": size / matched if matched else nan,
            "class_set_size_all": size_all / n if n else nan,
            "class_set_matched": matched,
        }
