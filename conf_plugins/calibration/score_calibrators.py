"""Score calibrators for detectors, fitted on held-out detections, and operating thresholds.

The target (``target``) is either binary — ``"hit"``: the detection matches a GT box of its
class at IoU t (:func:`~conf_plugins.calibration.detection_matching.match_detection_batch`)
— or localisation-aware — ``"iou"``: the IoU with the matched GT box, 0 for a detection
matched to none (Oksuz et al., CVPR 2023; Kuzucu et al., ECCV 2024: a calibrated score
should predict the IoU) — or ``"mask_iou"``: the same with the detections matched by mask IoU
(post-hoc mask scoring: the score predicts the quality of the instance mask; the adapter
supplies the mask matches, the maps here treat it as ``"iou"``). Class-wise calibrators
(``classwise``) fit one map per class; a class without held-out detections uses the map
pooled over all classes; class-agnostic ones fit the pooled map for every class.

* **identity**: the scores as they are (only the operating thresholds below).
* **platt**: sigmoid(a · logit(s) + b) per class (Platt 1999), (a, b) minimising the binary
  cross-entropy against the target (soft for ``"iou"``) by Newton's method; a >= 0, so the
  map never reverses the ranking of a class (a fit with a < 0 falls back to a = 0).
* **linear**: clip(m · s + c, 0, 1) per class, least squares with m >= 0 (Kuzucu et al.'s
  linear regression, ``positive=True``).

* **temperature**: scores softmax(z / T)_c of the K+1 class logits z (Guo et al. 2017,
  eq. 9, applied to the detector's classifier as Küppers et al. 2020 do), computed from the
  detection's class probabilities; for dense heads (sigmoid scores) sigmoid(logit(s) / T),
  i.e. the same with the two logits (logit(s), 0). T minimises the binary NLL of the
  detections' scores against correctness. Applied to the detections after NMS; no box changes.
* **histogram**: class-wise histogram binning (Zadrozny & Elkan 2001): B equal-width score
  bins per class, the calibrated score is the bin's accuracy on the held-out split. Piece-
  wise constant: detections of a bin tie, and a bin less accurate than a lower one reorders.
* **isotonic**: class-wise isotonic regression (Zadrozny & Elkan 2002): the non-decreasing
  fit (pool-adjacent-violators) of accuracy on score, linearly interpolated between the
  fitted points as scikit-learn's ``IsotonicRegression`` predicts; it never reorders the
  detections of a class (it may tie them).

Histogram and isotonic fit from streamed counts per (class, fine score bin)
(:class:`~conf_plugins.calibration.detection_stats.DetectionBinStats`), temperature, Platt
and linear from a bounded uniform sample of held-out detections.

**Operating thresholds** (``thresholds``, one per class, NaN until chosen): a detection is
kept when its calibrated score is above its class's threshold, the LRP-optimal one of the
held-out split after calibration (:meth:`~conf_plugins.calibration.lrp.LRPStats.operating_thresholds`).
All fitted state is tensors (buffers of :class:`DetectionScoreCalibrator`), saved in the
model's checkpoint with a fingerprint of the weights it belongs to and of the calibrator's
settings.
"""

import math

import numpy as np
import torch
from torch import nn

from .binning import bin_index
from .detection_stats import DetectionBinStats
from .fingerprint import SealedState
from .logistic import LOGIT_EPS, fit_logistic, logit
from .temperature import T_MAX, T_MIN

METHODS = ("identity", "temperature", "platt", "linear", "histogram", "isotonic")
TARGETS = ("hit", "iou", "mask_iou")
SAMPLED_METHODS = ("temperature", "platt", "linear")  # fitted on a sample, not on counts
MIN_CLASS_DETECTIONS = 10  # fewer held-out detections of a class: Platt / linear use the pooled fit


def _check_fit_inputs(logits, classes, correct):
    logits = torch.as_tensor(logits).detach().double()
    classes = torch.as_tensor(classes).detach().long().reshape(-1)
    correct = torch.as_tensor(correct).detach().reshape(-1)
    if logits.dim() != 2 or logits.shape[0] != classes.numel() or correct.numel() != classes.numel():
        raise ValueError(
            f"need logits (N, K+1), classes (N,) and correct (N,), got "
            f"{tuple(logits.shape)}, {tuple(classes.shape)}, {tuple(correct.shape)}"
        )
    if classes.numel() == 0:
        raise ValueError("no detections to fit the temperature on")
    if not torch.isfinite(logits).all():
        raise ValueError("logits contain NaN or inf")
    if classes.min() < 0 or classes.max() >= logits.shape[1] - 1:
        raise ValueError(
            f"classes must be in [0, {logits.shape[1] - 1}) (K foreground classes "
            f"of K+1 logits), got [{classes.min()}, {classes.max()}]"
        )
    return logits, classes, correct.double()


def binary_temperature_nll(beta: float, logits, classes, correct) -> float:
    """Mean binary NLL of the detection scores p = softmax(β z)_c against correctness."""
    z = beta * logits
    log_norm = torch.logsumexp(z, dim=1)
    log_p = z.gather(1, classes[:, None])[:, 0] - log_norm
    others = z.scatter(1, classes[:, None], -math.inf)
    log_not_p = torch.logsumexp(others, dim=1) - log_norm  # log(1 - p), stable
    return float(-(correct * log_p + (1 - correct) * log_not_p).mean())


def fit_binary_temperature(logits, classes, correct, grid: int = 121, tol: float = 1e-7) -> float:
    """T in [T_MIN, T_MAX] minimising :func:`binary_temperature_nll` over detections:
    ``logits`` (N, K+1) of each detection's proposal, ``classes`` (N,) its class, ``correct``
    (N,) bool. A log-spaced grid brackets the minimum, golden-section search refines it."""
    z, c, y = _check_fit_inputs(logits, classes, correct)
    log_betas = np.linspace(-math.log(T_MAX), -math.log(T_MIN), grid)
    losses = [binary_temperature_nll(math.exp(b), z, c, y) for b in log_betas]
    k = int(np.argmin(losses))
    lo, hi = log_betas[max(k - 1, 0)], log_betas[min(k + 1, grid - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    f = lambda b: binary_temperature_nll(math.exp(b), z, c, y)  # noqa: E731
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = f(a), f(b)
    while hi - lo > tol:
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = f(b)
    best = min((losses[k], log_betas[k]), (f(0.5 * (lo + hi)), 0.5 * (lo + hi)))[1]
    return math.exp(-best)


def fit_platt(scores, targets) -> tuple:
    """(a, b) of sigmoid(a · logit(s) + b) minimising the mean binary cross-entropy against
    ``targets`` in [0, 1] (:func:`~conf_plugins.calibration.logistic.fit_logistic`); a >= 0
    (a fit with a < 0 falls back to the constant a = 0, b = logit(mean target))."""
    z, y = logit(torch.as_tensor(scores)), torch.as_tensor(targets).double()
    mean = float(y.mean().clamp(LOGIT_EPS, 1 - LOGIT_EPS))
    w = fit_logistic(torch.stack([z, torch.ones_like(z)], dim=1), y, init=torch.tensor([1.0, 0.0]))
    a, b = float(w[0]), float(w[1])
    return (a, b) if a >= 0 and math.isfinite(a + b) else (0.0, math.log(mean / (1 - mean)))


def fit_linear(scores, targets) -> tuple:
    """(m, c) of m · s + c by least squares with m >= 0 (m = 0: the mean target)."""
    s, y = torch.as_tensor(scores).double(), torch.as_tensor(targets).double()
    centred = s - s.mean()
    variance = float((centred * centred).sum())
    m = float((centred * (y - y.mean())).sum()) / variance if variance > 0 else 0.0
    m = max(m, 0.0)
    return m, float(y.mean() - m * s.mean())


def pool_adjacent_violators(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The weighted least-squares non-decreasing fit of ``y`` (in order), weights ``w`` > 0."""
    values, weights, sizes = [], [], []
    for yi, wi in zip(y.astype(float), w.astype(float)):
        values.append(yi)
        weights.append(wi)
        sizes.append(1)
        while len(values) > 1 and values[-2] > values[-1]:
            v, wt, n = values.pop(), weights.pop(), sizes.pop()
            values[-1] = (values[-1] * weights[-1] + v * wt) / (weights[-1] + wt)
            weights[-1] += wt
            sizes[-1] += n
    return np.repeat(values, sizes)


class DetectionScoreCalibrator(SealedState, nn.Module):
    """One fitted score calibrator (``method`` of :data:`METHODS`, ``target`` of
    :data:`TARGETS`, class-wise or not) for ``num_classes`` foreground classes, held in
    buffers: ``log_temperature``; ``params`` (C, 2) of Platt (a, b) / linear (m, c);
    ``bin_values`` (C, B); ``knot_x`` / ``knot_y`` (C, F, NaN-padded) of the isotonic fits;
    ``thresholds`` (C,) operating thresholds (NaN: none chosen); ``fingerprint`` (32 uint8,
    zero until fitted) of the weights it belongs to and of its own settings and state.
    """

    def __init__(
        self,
        method: str,
        num_classes: int,
        num_bins: int = 10,
        isotonic_bins: int = 1000,
        target: str = "hit",
        classwise: bool = True,
    ):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"score calibration method must be one of {METHODS}, got {method!r}")
        if target not in TARGETS:
            raise ValueError(f"score calibration target must be one of {TARGETS}, got {target!r}")
        self.target, self.classwise = target, bool(classwise)
        if num_classes < 1 or num_bins < 1 or isotonic_bins < 1:
            raise ValueError(
                "num_classes, num_bins and isotonic_bins must be >= 1, got "
                f"{num_classes}, {num_bins}, {isotonic_bins}"
            )
        self.method, self.num_classes = method, num_classes
        self.num_bins, self.isotonic_bins = num_bins, isotonic_bins
        self.register_buffer("fingerprint", torch.zeros(32, dtype=torch.uint8))
        self.register_buffer("thresholds", torch.full((num_classes,), math.nan, dtype=torch.float64))
        if method == "temperature":
            self.register_buffer("log_temperature", torch.zeros((), dtype=torch.float64))
        elif method in ("platt", "linear"):
            self.register_buffer("params", torch.zeros(num_classes, 2, dtype=torch.float64))
        elif method == "histogram":
            self.register_buffer("bin_values", torch.zeros(num_classes, num_bins, dtype=torch.float64))
        elif method == "isotonic":
            nan = torch.full((num_classes, isotonic_bins), math.nan, dtype=torch.float64)
            self.register_buffer("knot_x", nan.clone())
            self.register_buffer("knot_y", nan.clone())

    @property
    def has_thresholds(self) -> bool:
        return bool(torch.isfinite(self.thresholds).all())

    @property
    def settings(self) -> str:
        """What, beside the fitted state, the calibrator is: its method, target, scope."""
        return f"{self.method}:{self.target}:{'classwise' if self.classwise else 'agnostic'}"

    @property
    def temperature(self) -> float:
        return float(self.log_temperature.exp())

    def stats_bins(self) -> int:
        """Fine score bins of the :class:`DetectionBinStats` that :meth:`fit_counts` takes."""
        return self.num_bins if self.method == "histogram" else self.isotonic_bins

    # -- fitting -----------------------------------------------------------------------
    @torch.no_grad()
    def fit_temperature(self, logits, classes, target) -> "DetectionScoreCalibrator":
        """One T over the class logits (class-agnostic by construction), against ``target``
        (N,): hits, or IoUs as soft targets."""
        if self.method != "temperature":
            raise ValueError(f"fit_temperature on a {self.method} calibrator")
        self.log_temperature.fill_(math.log(fit_binary_temperature(logits, classes, target)))
        return self

    @torch.no_grad()
    def fit_sample(
        self, scores, classes, target, min_detections: int = MIN_CLASS_DETECTIONS
    ) -> "DetectionScoreCalibrator":
        """Platt / linear from held-out detections: ``scores`` (N,), ``classes`` (N,),
        ``target`` (N,) in [0, 1]; per class (class-wise) or pooled. A class with fewer than
        ``min_detections`` detections, or whose target does not vary (all hits, all misses),
        gets the pooled fit: a map fitted on a handful of detections is a step function."""
        if self.method not in ("platt", "linear"):
            raise ValueError(f"fit_sample fits platt / linear, not {self.method}")
        scores = torch.as_tensor(scores).double().reshape(-1)
        classes = torch.as_tensor(classes).long().reshape(-1)
        target = torch.as_tensor(target).double().reshape(-1)
        if not (scores.numel() == classes.numel() == target.numel()):
            raise ValueError("scores, classes and target differ in length")
        if scores.numel() < 2:
            raise ValueError(f"need >= 2 held-out detections to fit {self.method}, got {scores.numel()}")
        for name, values in (("scores", scores), ("target", target)):
            if not (torch.isfinite(values).all() and ((values >= 0) & (values <= 1)).all()):
                raise ValueError(f"{name} must be finite and in [0, 1]")
        fit = fit_platt if self.method == "platt" else fit_linear
        pooled = torch.tensor(fit(scores, target), dtype=torch.float64)
        self.params.copy_(pooled.expand_as(self.params))
        if self.classwise:
            for c in range(self.num_classes):
                rows = classes == c
                if int(rows.sum()) >= min_detections and float(target[rows].std()) > 0:
                    self.params[c] = torch.tensor(fit(scores[rows], target[rows]), dtype=torch.float64)
        return self

    def set_thresholds(self, thresholds) -> "DetectionScoreCalibrator":
        """The per-class operating thresholds (C,) in [0, 1], on calibrated scores."""
        thresholds = torch.as_tensor(thresholds, dtype=torch.float64).reshape(-1)
        if thresholds.numel() != self.num_classes or not (
            torch.isfinite(thresholds).all() and ((thresholds >= 0) & (thresholds <= 1)).all()
        ):
            raise ValueError(
                f"need {self.num_classes} finite thresholds in [0, 1], got {thresholds.tolist()}"
            )
        self.thresholds.copy_(thresholds)
        return self

    @torch.no_grad()
    def fit_counts(self, stats: DetectionBinStats) -> "DetectionScoreCalibrator":
        """Histogram binning or isotonic regression from per (class, score bin) counts, of
        hits or of IoUs (``target``)."""
        if self.method not in ("histogram", "isotonic"):
            raise ValueError(f"fit_counts fits histogram / isotonic, not {self.method}")
        if stats.num_groups != self.num_classes or stats.bins != (self.stats_bins(),):
            raise ValueError(
                f"need DetectionBinStats({self.num_classes}, ({self.stats_bins()},)),"
                f" got ({stats.num_groups}, {stats.bins})"
            )
        count, sum_conf = stats.state[0], stats.state[1]
        sum_correct = stats.state[2 if self.target == "hit" else 3]  # Σ hits or Σ IoUs
        if count.sum() == 0:
            raise ValueError("no held-out detections to fit the score calibrator on")
        pooled = [s.sum(0) for s in (count, sum_conf, sum_correct)]
        if not self.classwise:  # every class gets the pooled fit
            count, sum_conf, sum_correct = (p.expand_as(count) for p in pooled)
        if self.method == "histogram":
            centres = (torch.arange(self.num_bins, dtype=torch.float64) + 0.5) / self.num_bins
            fallback = torch.where(pooled[0] > 0, pooled[2] / pooled[0].clamp_min(1), centres)
            values = torch.where(count > 0, sum_correct / count.clamp_min(1), fallback)
            self.bin_values.copy_(values.expand_as(self.bin_values))
        else:
            pooled_knots = self._isotonic_knots(*pooled)
            for c in range(self.num_classes):
                x, y = (
                    self._isotonic_knots(count[c], sum_conf[c], sum_correct[c])
                    if count[c].sum() > 0
                    else pooled_knots
                )
                self.knot_x[c].fill_(math.nan)
                self.knot_y[c].fill_(math.nan)
                self.knot_x[c, : len(x)] = torch.as_tensor(x)
                self.knot_y[c, : len(y)] = torch.as_tensor(y)
        return self

    @staticmethod
    def _isotonic_knots(count, sum_conf, sum_correct):
        """(mean score, isotonic accuracy) of each non-empty bin, in score order."""
        keep = count > 0
        n = count[keep].numpy()
        x = (sum_conf[keep] / count[keep]).numpy()
        y = pool_adjacent_violators((sum_correct[keep] / count[keep]).numpy(), n)
        return x, y

    # -- the fingerprint ---------------------------------------------------------------
    def verify(self, named_weights, signature: str = "", config_key: str = "MODEL.CALIBRATION.METHOD"):
        """RuntimeError unless fitted for exactly these weights, mode and state."""
        self.check_sealed(
            named_weights,
            signature,
            missing=f"{config_key} asks for {self.method} score calibration but the loaded weights hold "
            "no fitted calibrator: fit one with tools/fit_detection_calibration.py and load its checkpoint",
            stale=f"the {self.method} score calibrator in these weights was fitted for other weights, "
            "another inference mode or another calibration method / target / scope / bin count (stale or "
            "mismatched calibrator): refit it with tools/fit_detection_calibration.py",
        )

    # -- inference ---------------------------------------------------------------------
    def scale_probabilities(self, probs: torch.Tensor) -> torch.Tensor:
        """Temperature on class probabilities (N, K+1): softmax(log p / T), which is
        softmax(z / T) of the logits z they are the softmax of."""
        if self.method != "temperature":
            raise ValueError(f"scale_probabilities is temperature scaling, not {self.method}")
        log_p = probs.double().clamp_min(torch.finfo(torch.float64).tiny).log()
        return torch.softmax(log_p / self.log_temperature.exp().to(log_p.device), dim=-1).to(probs)

    def scale_sigmoid_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """Temperature on sigmoid scores (dense heads): sigmoid(logit(s) / T)."""
        if self.method != "temperature":
            raise ValueError(f"scale_sigmoid_scores is temperature scaling, not {self.method}")
        z = logit(scores.double())
        return torch.sigmoid(z / self.log_temperature.exp().to(z.device)).to(scores)

    def calibrate_scores(self, scores: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Calibrated scores of detections of ``classes`` (the maps applied after NMS:
        platt, linear, histogram, isotonic; identity and temperature return them as they are)."""
        if self.method in ("identity", "temperature") or scores.numel() == 0:
            return scores
        s = scores.double()
        if self.method in ("platt", "linear"):
            a, b = self.params[classes.long()].to(s.device).unbind(1)
            if self.method == "platt":
                return torch.sigmoid(a * logit(s) + b).to(scores)
            return (a * s + b).clamp(0, 1).to(scores)
        if self.method == "histogram":
            bins = bin_index(s, self.num_bins)  # ((k-1)/B, k/B], as DetectionBinStats bins
            return self.bin_values[classes.long(), bins].to(scores)
        out = torch.empty_like(s)
        for c in classes.unique().tolist():
            rows = classes == c
            x, y = self.knot_x[c], self.knot_y[c]
            known = ~torch.isnan(x)
            out[rows] = _interp(s[rows], x[known], y[known])
        return out.to(scores)

    def keep(self, scores: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Which detections pass their class's operating threshold (calibrated score above it)."""
        if not self.has_thresholds:
            raise RuntimeError(
                "no operating thresholds in this calibrator: refit it with tools/fit_detection_calibration.py"
            )
        thresholds = self.thresholds.to(scores.device)[classes.long()]
        return (scores.double() > thresholds) | (thresholds == 0)  # threshold 0 keeps a score of 0

    def extra_repr(self) -> str:
        state = ("T=%.4f" % self.temperature) if self.method == "temperature" else ""
        return (
            f"method={self.method}, target={self.target}, classwise={self.classwise}, "
            f"num_classes={self.num_classes}, fitted={self.fitted}, thresholds={self.has_thresholds} {state}"
        )


def _interp(s, x, y):
    """np.interp in torch: linear between knots, clipped to the end values."""
    if len(x) == 1:
        return y.expand_as(s).clone()
    i = torch.searchsorted(x.contiguous(), s.contiguous()).clamp(1, len(x) - 1)
    x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
    t = ((s - x0) / (x1 - x0).clamp_min(1e-300)).clamp(0, 1)
    return y0 + t * (y1 - y0)
