"""Score calibrators for detectors, fitted on held-out detections.

The target is binary: a detection is correct when it matches a GT box of its class
(:func:`~conf_plugins.calibration.detection_matching.match_detection_batch`).

* **temperature**: scores softmax(z / T)_c of the K+1 class logits z (Guo et al. 2017,
  eq. 9, applied to the detector's classifier as Küppers et al. 2020 do); T minimises the
  binary NLL of the detections' scores against correctness. Applied before the score
  threshold and NMS; monotone within a proposal, so no box changes.
* **histogram**: class-wise histogram binning (Zadrozny & Elkan 2001): B equal-width score
  bins per class, the calibrated score is the bin's accuracy on the held-out split. Piece-
  wise constant: detections of a bin tie, and a bin less accurate than a lower one reorders.
* **isotonic**: class-wise isotonic regression (Zadrozny & Elkan 2002): the non-decreasing
  fit (pool-adjacent-violators) of accuracy on score, linearly interpolated between the
  fitted points as scikit-learn's ``IsotonicRegression`` predicts; it never reorders the
  detections of a class (it may tie them).

Histogram and isotonic fit from streamed counts per (class, fine score bin)
(:class:`~conf_plugins.calibration.detection_stats.DetectionBinStats`); a class without
held-out detections uses the fit pooled over all classes. All fitted state is tensors
(buffers of :class:`DetectionScoreCalibrator`), saved in the model's checkpoint with a
fingerprint of the weights it belongs to.
"""

import math

import numpy as np
import torch
from torch import nn

from .binning import bin_index
from .detection_stats import DetectionBinStats
from .fingerprint import weights_fingerprint
from .temperature import T_MAX, T_MIN

METHODS = ("temperature", "histogram", "isotonic")


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


class DetectionScoreCalibrator(nn.Module):
    """One fitted score calibrator (``method`` of :data:`METHODS`) for ``num_classes``
    foreground classes, held in buffers: ``log_temperature``; ``bin_values`` (C, B);
    ``knot_x`` / ``knot_y`` (C, F, NaN-padded) of the isotonic fits; ``fingerprint`` (32
    uint8, zero until fitted) of the weights it belongs to and of its own state.
    """

    def __init__(self, method: str, num_classes: int, num_bins: int = 10, isotonic_bins: int = 1000):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"score calibration method must be one of {METHODS}, got {method!r}")
        if num_classes < 1 or num_bins < 1 or isotonic_bins < 1:
            raise ValueError(
                "num_classes, num_bins and isotonic_bins must be >= 1, got "
                f"{num_classes}, {num_bins}, {isotonic_bins}"
            )
        self.method, self.num_classes = method, num_classes
        self.num_bins, self.isotonic_bins = num_bins, isotonic_bins
        self.register_buffer("fingerprint", torch.zeros(32, dtype=torch.uint8))
        if method == "temperature":
            self.register_buffer("log_temperature", torch.zeros((), dtype=torch.float64))
        elif method == "histogram":
            self.register_buffer("bin_values", torch.zeros(num_classes, num_bins, dtype=torch.float64))
        else:
            nan = torch.full((num_classes, isotonic_bins), math.nan, dtype=torch.float64)
            self.register_buffer("knot_x", nan.clone())
            self.register_buffer("knot_y", nan.clone())

    @property
    def fitted(self) -> bool:
        return bool(self.fingerprint.any())

    @property
    def temperature(self) -> float:
        return float(self.log_temperature.exp())

    def stats_bins(self) -> int:
        """Fine score bins of the :class:`DetectionBinStats` that :meth:`fit_counts` takes."""
        return self.num_bins if self.method == "histogram" else self.isotonic_bins

    # -- fitting -----------------------------------------------------------------------
    @torch.no_grad()
    def fit_temperature(self, logits, classes, correct) -> "DetectionScoreCalibrator":
        if self.method != "temperature":
            raise ValueError(f"fit_temperature on a {self.method} calibrator")
        self.log_temperature.fill_(math.log(fit_binary_temperature(logits, classes, correct)))
        return self

    @torch.no_grad()
    def fit_counts(self, stats: DetectionBinStats) -> "DetectionScoreCalibrator":
        """Histogram binning or isotonic regression from per (class, score bin) counts."""
        if self.method == "temperature":
            raise ValueError("a temperature is fitted on logits (fit_temperature), not counts")
        if stats.num_groups != self.num_classes or stats.bins != (self.stats_bins(),):
            raise ValueError(
                f"need DetectionBinStats({self.num_classes}, ({self.stats_bins()},)),"
                f" got ({stats.num_groups}, {stats.bins})"
            )
        count, sum_conf, sum_correct = (stats.state[i] for i in range(3))
        if count.sum() == 0:
            raise ValueError("no held-out detections to fit the score calibrator on")
        pooled = [s.sum(0) for s in (count, sum_conf, sum_correct)]
        if self.method == "histogram":
            centres = (torch.arange(self.num_bins, dtype=torch.float64) + 0.5) / self.num_bins
            fallback = torch.where(pooled[0] > 0, pooled[2] / pooled[0].clamp_min(1), centres)
            self.bin_values.copy_(torch.where(count > 0, sum_correct / count.clamp_min(1), fallback))
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
    def _own_state(self):
        return [(n, b) for n, b in self.named_buffers() if n != "fingerprint"]

    def seal(self, named_weights, signature: str = ""):
        """Record the fingerprint of ``named_weights`` (the weights the fit used), of
        ``signature`` (their inference mode) and of this calibrator's fitted state."""
        self.fingerprint.copy_(self._digest(named_weights, signature))

    def _digest(self, named_weights, signature):
        return weights_fingerprint([*named_weights, *self._own_state()], f"{self.method};{signature}")

    def verify(self, named_weights, signature: str = "", config_key: str = "the config"):
        """RuntimeError unless fitted for exactly these weights, mode and state."""
        if not self.fitted:
            raise RuntimeError(
                f"{config_key} asks for {self.method} score calibration but the "
                "loaded weights hold no fitted calibrator: fit one with "
                "tools/fit_detection_calibration.py and load its checkpoint"
            )
        if not torch.equal(self._digest(named_weights, signature), self.fingerprint.cpu()):
            raise RuntimeError(
                f"the {self.method} score calibrator in these weights was fitted "
                "for other weights, another inference mode or another "
                "calibration method / bin count (stale or mismatched calibrator): "
                "refit it with tools/fit_detection_calibration.py"
            )

    # -- inference ---------------------------------------------------------------------
    def scale_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Class logits / T (temperature); other methods leave logits alone."""
        if self.method != "temperature":
            return logits
        return logits / self.log_temperature.exp().to(logits)

    def calibrate_scores(self, scores: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Calibrated scores of detections of ``classes`` (histogram / isotonic)."""
        if self.method == "temperature" or scores.numel() == 0:
            return scores
        s = scores.double()
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

    def extra_repr(self) -> str:
        state = ("T=%.4f" % self.temperature) if self.method == "temperature" else ""
        return f"method={self.method}, num_classes={self.num_classes}, fitted={self.fitted} {state}"


def _interp(s, x, y):
    """np.interp in torch: linear between knots, clipped to the end values."""
    if len(x) == 1:
        return y.expand_as(s).clone()
    i = torch.searchsorted(x.contiguous(), s.contiguous()).clamp(1, len(x) - 1)
    x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
    t = ((s - x0) / (x1 - x0).clamp_min(1e-300)).clamp(0, 1)
    return y0 + t * (y1 - y0)
