"""Mergeable sufficient statistics of (confidence, correct) pairs and the metrics derived from them.

Conventions (shared by every class of :mod:`conf_plugins.calibration`):

* **Fine bins.** ``K`` equal-width bins; bin ``k`` (1-based) holds ``((k-1)/K, k/K]`` and
  confidence exactly 0 goes to the first bin, the binning of the DDN paper (§III, the sets
  ``D_k`` before eq. 13). Edges are the float64 values ``k/K`` (correctly rounded) and a
  confidence is compared *as its exact float value*, so ``float32(0.3) = 0.30000001…`` lies
  above the edge ``0.3`` while ``float64(0.3)`` lies on it. The default ``K = 6000`` is
  divisible by every usual coarse bin count (10, 15, 20, 25, 30, 40, 50, 60, 75, 100, …) and
  puts the usual thresholds (0.05, 0.3, 0.5, 0.7, …) on fine edges, so coarse metrics and
  thresholded metrics are exact; it is fine enough that ranking metrics are close to exact
  (below) and small enough that the state is 480 kB and one all-reduce.
* **Per fine bin, split by correctness** (float64, additive, memory O(K)): count,
  Σ c, Σ c², Σ −log max(c, ε) and Σ −log max(1−c, ε) with ``ε = LOG_EPS`` (float64 machine
  epsilon, scikit-learn's ``log_loss`` clipping for float64 input). Per-sample terms are
  evaluated in float32 for float32 input and in float64 otherwise, and summed in float64.
* **Coarse bins** (ECE, MSCE, MCE, reliability diagram) are unions of fine bins: exact.
* **Thresholded metrics** (success-prediction paper §3.3): a prediction is *confident* when
  ``c > threshold``. The paper calls a PoS below 0.5 unconfident, i.e. confident when
  ``c >= 0.5``; the two differ only for ``c`` exactly equal to the threshold. Strict ``>``
  is what the ``(…, k/K]`` bins can represent exactly, so the threshold must be a fine edge
  in (0, 1] (at 0, ``c == 0`` and ``c`` in ``(0, 1/K]`` share the first bin). A numpy
  float32 threshold stands for the decimal it prints as (``np.float32(0.3)`` -> 0.3).
* **Ranking metrics** (AUROC, AUPR-In, AUPR-Out, AURC) treat each fine bin as one group of
  tied scores: exact for data whose confidences are constant within each fine bin (e.g.
  quantised scores), otherwise exact up to the order *inside* a fine bin (width 1/K).
  Ties are resolved by their expectation over a random order, as scikit-learn does. The
  max-softmax of a segmentation network often puts most pixels above 1 − 1/K, i.e. in one
  tie group; raise ``num_fine_bins`` where the ranking inside it matters.
* **Undefined values** are ``nan``, never an exception: AUROC when all samples are correct or
  all wrong; AUPR-In when none is correct; AUPR-Out when none is wrong; precision without a
  confident prediction; recall without a correct one; failure_detection without a wrong one;
  F0.5 when tp = fp = fn = 0. Empty
  coarse bins are skipped in ECE/MSCE/MCE and are ``nan`` in :meth:`reliability`.
"""
import functools
import math
import numbers

import numpy as np
import torch

DEFAULT_FINE_BINS = 6000
MAX_FINE_BINS = 1_000_000  # binning below is exact for float32 input up to this K
LOG_EPS = float(np.finfo(np.float64).eps)
FORMAT_VERSION = 1
F_BETA = 0.5  # success-prediction paper §3.3: precision weighted double
DEFAULT_NUM_BINS = 10  # coarse bins of ECE / MSCE / MCE everywhere (DDN paper §III: M = 10)
_CHUNK = 1 << 18  # samples per pass: bounds temporaries (~8 MB) and keeps them in cache
# the keys of CalibrationStats.compute (plus "mean_entropy" when entropies were given)
METRIC_NAMES = ("ECE", "MSCE", "MCE", "NLL", "NLL_DDN", "Brier", "AUROC", "AUPR_In", "AUPR_Out",
                "AURC", "accuracy", "precision", "recall", "F0.5", "coverage",
                "failure_detection", "count", "mean_confidence", "success_rate")
_STATS = ("count", "sum_conf", "sum_conf_sq", "sum_neg_log_conf", "sum_neg_log_one_minus_conf")


@functools.lru_cache(maxsize=None)
def _upper_edges(num_bins: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    """Upper edge of each fine bin, rounded *down* to ``dtype``.

    For a value ``v`` of ``dtype`` and the float64 edge ``e``: ``v > e`` iff ``v > down(e)``,
    where ``down(e)`` is the largest ``dtype`` value <= ``e``; comparisons in ``dtype``
    therefore agree with comparisons against the exact float64 edges.
    """
    exact = torch.arange(1, num_bins + 1, dtype=torch.float64) / num_bins
    edges = exact.to(dtype)
    too_big = edges.to(torch.float64) > exact
    edges[too_big] = torch.nextafter(edges[too_big], torch.tensor(-1.0, dtype=dtype))
    return edges.to(device)


def sum_over_ranks(flat: torch.Tensor, group=None):
    """``flat`` summed over the ranks of ``group`` (a CPU tensor), or None without
    torch.distributed. One all-reduce; on CUDA for the NCCL backend, on CPU otherwise (gloo)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return None
    device = "cpu"
    if dist.get_backend(group) == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    flat = flat.to(device)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    return flat.cpu()


def as_count(value, name: str, upper: int = MAX_FINE_BINS) -> int:
    """``value`` (int or numpy integer, not bool) as an int in [1, upper]; else ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) \
            or not 1 <= int(value) <= upper:
        raise ValueError(f"{name} must be an integer in [1, {upper}], got {value!r}")
    return int(value)


def as_threshold(value, name: str = "threshold") -> float:
    """``value`` as a Python float in (0, 1]; ValueError otherwise.

    A numpy float32 / float16 scalar stands for the decimal it prints as
    (``np.float32(0.3)`` -> 0.3), not for its binary expansion 0.30000001192…
    """
    if isinstance(value, (np.float32, np.float16)):
        value = float(str(value))
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number in (0, 1], got {value!r}")
    value = float(value)
    if not 0 < value <= 1:  # also refuses NaN; at 0, c == 0 and c in (0, 1/K] share a bin
        raise ValueError(f"{name} must be in (0, 1] (confident = confidence > {name}), "
                         f"got {value!r}")
    return value


def compute_dtype(values: torch.Tensor) -> torch.dtype:
    """float64 input stays float64; every other input is evaluated in float32 (exact upcast)."""
    return torch.float64 if values.dtype == torch.float64 else torch.float32


def bin_index(values: torch.Tensor, num_bins: int) -> torch.Tensor:
    """0-based bin of each value in ``[0, 1]``: ``j`` such that ``j/K < v <= (j+1)/K``; 0 -> 0.

    ``values`` must already be validated and of :func:`compute_dtype`. The candidate
    ``trunc(v*K - 1/2)`` is the true bin or the one below it (rounding errors are far below
    half a bin for ``K <= MAX_FINE_BINS``); one comparison against the exact edge fixes it.
    """
    upper = _upper_edges(num_bins, values.dtype, str(values.device))
    index = torch.mul(values, num_bins).sub_(0.5).long()
    index += values > upper.index_select(0, index.reshape(-1)).view_as(index)
    return index


def as_tensor(x, name: str) -> torch.Tensor:
    """A tensor view of ``x`` (tensor, numpy array or sequence)."""
    if isinstance(x, torch.Tensor):
        return x.detach()
    try:
        array = np.asarray(x)
        if any(stride < 0 for stride in array.strides):  # e.g. a[::-1]; torch needs >= 0
            array = array.copy()
        return torch.from_numpy(array)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: cannot convert {type(x).__name__} to a tensor") from err


def as_unit_interval(x, name: str, mask=None) -> torch.Tensor:
    """``x`` as a floating tensor of :func:`compute_dtype` whose (unmasked) values are in [0, 1].

    Raises ValueError on NaN, inf or values outside [0, 1] among the values that count;
    masked-out entries may hold anything and are replaced by 0.
    """
    x = as_tensor(x, name)
    if x.is_complex():
        raise ValueError(f"{name} must be real, got {x.dtype}")
    x = x.to(compute_dtype(x)) if x.is_floating_point() else x.to(torch.float64)
    if x.numel() == 0:
        return x
    lo, hi = torch.aminmax(x)
    if bool(lo >= 0) and bool(hi <= 1):  # False for NaN
        return x
    counted = x if mask is None else x[mask]
    if not torch.isfinite(counted).all():
        raise ValueError(f"{name} contains NaN or inf")
    if counted.numel() and not (counted.min() >= 0 and counted.max() <= 1):
        raise ValueError(f"{name} must lie in [0, 1], got values in "
                         f"[{counted.min().item():.6g}, {counted.max().item():.6g}]")
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


def as_binary(x, name: str, mask=None) -> torch.Tensor:
    """``x`` as a bool tensor; raises ValueError unless every counted value is 0/1 (or bool)."""
    x = as_tensor(x, name)
    if x.dtype == torch.bool:
        return x
    valid = (x == 0) | (x == 1)
    if mask is not None:
        valid |= ~mask
    if not valid.all():
        raise ValueError(f"{name} must be bool or 0/1, got other values")
    return x != 0


def as_mask(mask, shape) -> torch.Tensor:
    """``mask`` as a bool tensor of ``shape`` (True = the sample counts)."""
    mask = as_tensor(mask, "mask")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor/array, got {mask.dtype}")
    if mask.shape != shape:
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {tuple(shape)}")
    return mask


def validated_pairs(values, labels, mask, value_name: str, label_name: str):
    """Checked (values in [0, 1], binary labels, mask) tensors of equal shape, or None when
    nothing is left to count (empty input or an all-False mask). Shared input rules of
    :meth:`CalibrationStats.update` and ``BayesBinningCalibrator.update``."""
    v = as_tensor(values, value_name)
    b = as_tensor(labels, label_name).to(v.device)
    if b.shape != v.shape:
        raise ValueError(f"{value_name} has shape {tuple(v.shape)} but {label_name} has "
                         f"shape {tuple(b.shape)}")
    if mask is not None:
        mask = as_mask(mask, v.shape).to(v.device)
        if not mask.any():
            return None
    if v.numel() == 0:
        return None
    return as_unit_interval(v, value_name, mask), as_binary(b, label_name, mask), mask


class CalibrationStats:
    """Sufficient statistics of (confidence, correct) pairs in ``num_fine_bins`` fine bins.

    Everything the metrics of the DDN paper (eq. 13–16), the success-prediction paper (§3.3)
    and the gradient-metrics paper (§2) need, in O(bins) memory: two objects merge by
    addition and distributed evaluation is one all-reduce. See the module docstring for the
    bin, threshold, tie and undefined-value conventions.

    Args:
        num_fine_bins: number of equal-width fine bins ``K`` (default 6000).
    """

    def __init__(self, num_fine_bins: int = DEFAULT_FINE_BINS):
        self.num_fine_bins = as_count(num_fine_bins, "num_fine_bins")
        self.reset()

    def check_metric_args(self, num_bins, threshold, names=("num_bins", "threshold")):
        """``(num_bins, threshold)`` as (int, float) if :meth:`compute` accepts them, else
        ValueError naming them by ``names`` (e.g. config keys): for components that take
        them from a config, to fail when built rather than after inference."""
        num_bins = self._coarse_bins(num_bins, names[0])
        threshold = as_threshold(threshold, names[1])
        self._edge_index(threshold, names[1])
        return num_bins, threshold

    def _coarse_bins(self, num_bins, name: str = "num_bins") -> int:
        """``num_bins`` as an int that divides the fine bins, else ValueError naming ``name``."""
        num_bins = as_count(num_bins, name)
        if self.num_fine_bins % num_bins:
            raise ValueError(f"{name}={num_bins} must divide the {self.num_fine_bins} fine "
                             "bins so that coarse bins are exact (e.g. 10, 15, 20, 25, 30, 50)")
        return num_bins

    def reset(self) -> "CalibrationStats":
        """Forget every sample."""
        # _state[s, r, k]: statistic s (see _STATS) of the samples in fine bin k that are
        # wrong (r = 0) or correct (r = 1). _entropy = [Σ entropy, number of samples with one].
        self._state = torch.zeros(len(_STATS), 2, self.num_fine_bins, dtype=torch.float64)
        self._entropy = torch.zeros(2, dtype=torch.float64)
        return self

    @property
    def count(self) -> int:
        """Number of samples accumulated."""
        return int(self._state[0].sum().item())

    def update(self, confidence, correct, mask=None, entropy=None) -> "CalibrationStats":
        """Accumulate samples: a few vectorised passes and scatter-adds per chunk of samples.

        Args:
            confidence: any shape, values in [0, 1] (tensor on any device, or numpy array).
            correct: same shape, bool or 0/1: whether the prediction was right.
            mask: optional bool, same shape; only True entries count (e.g. not ignore_index).
                Masked-out entries may hold anything, NaN included.
            entropy: optional per-sample entropy (e.g. :func:`normalized_entropy`), same
                shape, finite and >= 0; ``compute`` then also reports its mean.

        An input with no (unmasked) element changes nothing. Raises ValueError on mismatched
        shapes, NaN/inf or out-of-range confidences and non-binary ``correct``.
        """
        conf = as_tensor(confidence, "confidence")
        if conf.is_cuda and torch.are_deterministic_algorithms_enabled():
            conf = conf.cpu()  # CUDA scatter_add_ (float atomics) is not deterministic
        checked = validated_pairs(conf, correct, mask, "confidence", "correct")
        if checked is None:
            return self
        conf, corr, mask = checked
        if entropy is not None:
            self._add_entropy(entropy, conf.shape, mask)

        K = self.num_fine_bins
        size = 2 * K + 1  # row-major (wrong, correct) x K, plus one bin for masked-out samples
        sums = torch.zeros(len(_STATS), size, dtype=torch.float64, device=conf.device)
        conf, corr = conf.reshape(-1), corr.reshape(-1)
        mask = None if mask is None else mask.reshape(-1)
        for lo in range(0, conf.numel(), _CHUNK):
            part = slice(lo, lo + _CHUNK)
            self._accumulate(sums, conf[part], corr[part], None if mask is None else mask[part])
        sums = sums[:, :2 * K]
        sums[3:].neg_()  # Σ log -> Σ −log
        self._state += sums.reshape(len(_STATS), 2, K).cpu()
        return self

    def _accumulate(self, sums, conf, corr, mask):
        """Add one chunk (flat, validated) to ``sums`` (stat x (2K + 1)): a few passes + scatter."""
        K = self.num_fine_bins
        index = bin_index(conf, K).add_(corr, alpha=K)
        if mask is not None:
            index.masked_fill_(~mask, 2 * K)
        conf64 = conf.to(torch.float64)
        ones = torch.ones((), dtype=torch.float64, device=conf.device).expand_as(conf64)
        # scatter_add_ of ones, not bincount: 3x faster on CPU (bench/seg_metric_throughput.py)
        for row, weight in enumerate((ones, conf64, conf64 * conf64,
                                      conf.clamp(min=LOG_EPS).log_(),
                                      (1 - conf).clamp_(min=LOG_EPS).log_())):
            sums[row].scatter_add_(0, index, weight.to(torch.float64))

    def _add_entropy(self, entropy, shape, mask):
        ent = as_tensor(entropy, "entropy")
        if ent.shape != shape:
            raise ValueError(f"entropy has shape {tuple(ent.shape)}, expected {tuple(shape)}")
        ent = ent.to(torch.float64)
        if mask is not None:
            ent = torch.where(mask.to(ent.device), ent, torch.zeros((), dtype=ent.dtype,
                                                                     device=ent.device))
        if not (torch.isfinite(ent).all() and (ent >= 0).all()):
            raise ValueError("entropy must be finite and >= 0")
        n = ent.numel() if mask is None else int(mask.sum())
        self._entropy += torch.tensor([ent.sum().item(), n], dtype=torch.float64)

    # ----------------------------------------------------------------- merging, state
    def merge(self, other: "CalibrationStats") -> "CalibrationStats":
        """Add the samples of ``other`` (in place); returns self."""
        if not isinstance(other, CalibrationStats):
            raise TypeError(f"cannot merge {type(other).__name__} into CalibrationStats")
        if other.num_fine_bins != self.num_fine_bins:
            raise ValueError(f"cannot merge statistics with {other.num_fine_bins} fine bins "
                             f"into statistics with {self.num_fine_bins}")
        self._state += other._state
        self._entropy += other._entropy
        return self

    def __add__(self, other: "CalibrationStats") -> "CalibrationStats":
        return CalibrationStats(self.num_fine_bins).merge(self).merge(other)

    def all_reduce(self, group=None) -> "CalibrationStats":
        """Sum the statistics over all ranks of ``group`` (no-op without torch.distributed).

        One collective on a flat float64 buffer; on CUDA for the NCCL backend, on CPU
        otherwise (gloo). Every rank ends with the statistics of all ranks.
        """
        flat = sum_over_ranks(torch.cat([self._state.reshape(-1), self._entropy]), group)
        if flat is None:
            return self
        self._state.copy_(flat[:self._state.numel()].view_as(self._state))
        self._entropy.copy_(flat[self._state.numel():])
        return self

    def state_dict(self) -> dict:
        """Plain dict of CPU tensors and ints (picklable, ``torch.save``-able)."""
        state = {"format_version": FORMAT_VERSION, "num_fine_bins": self.num_fine_bins}
        state.update({name: self._state[i].clone() for i, name in enumerate(_STATS)})
        state["entropy_sum"], state["entropy_count"] = self._entropy.clone().unbind()
        return state

    def load_state_dict(self, state: dict) -> "CalibrationStats":
        """Replace the statistics by ``state``; ValueError if it does not fit this object."""
        if state.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"CalibrationStats state has format version "
                             f"{state.get('format_version')!r}, expected {FORMAT_VERSION}")
        if state.get("num_fine_bins") != self.num_fine_bins:
            raise ValueError(f"CalibrationStats state has {state.get('num_fine_bins')!r} fine "
                             f"bins, this object has {self.num_fine_bins}")
        missing = [n for n in _STATS + ("entropy_sum", "entropy_count") if n not in state]
        if missing:
            raise ValueError(f"CalibrationStats state lacks {missing}")
        tensors = [torch.as_tensor(state[n], dtype=torch.float64) for n in _STATS]
        if any(t.shape != (2, self.num_fine_bins) for t in tensors):
            raise ValueError(f"CalibrationStats state tensors must have shape "
                             f"(2, {self.num_fine_bins})")
        entropy = torch.tensor([float(state["entropy_sum"]), float(state["entropy_count"])],
                               dtype=torch.float64)
        new = torch.stack(tensors)
        if not (torch.isfinite(new).all() and torch.isfinite(entropy).all()):
            raise ValueError("CalibrationStats state holds NaN or inf")
        if not ((new >= 0).all() and (entropy >= 0).all()):
            raise ValueError("CalibrationStats state holds negative sums or counts")
        if not ((new[0] == new[0].round()).all() and entropy[1] == entropy[1].round()):
            raise ValueError("CalibrationStats state holds non-integer counts")
        slack = 1e-9 * (1 + new[0])
        if not ((new[1] <= new[0] + slack).all() and (new[2] <= new[0] + slack).all()):
            raise ValueError("CalibrationStats state is inconsistent: a bin's sum of "
                             "confidences exceeds its count (confidences are <= 1)")
        self._state, self._entropy = new, entropy
        return self

    @classmethod
    def from_state_dict(cls, state: dict) -> "CalibrationStats":
        """A new object holding ``state`` (with its number of fine bins)."""
        return cls(int(state.get("num_fine_bins", DEFAULT_FINE_BINS))).load_state_dict(state)

    def __repr__(self) -> str:
        return f"CalibrationStats(num_fine_bins={self.num_fine_bins}, count={self.count})"

    # ----------------------------------------------------------------- metrics
    def _numpy(self):
        return {name: self._state[i].numpy() for i, name in enumerate(_STATS)}

    def _coarse(self, num_bins: int) -> np.ndarray:
        """State summed over wrong+correct and into ``num_bins`` coarse bins: (stat, bin)."""
        num_bins = self._coarse_bins(num_bins)
        return self._state.sum(1).view(len(_STATS), num_bins, -1).sum(2).numpy()

    def _edge_index(self, threshold: float, name: str = "threshold") -> int:
        threshold = as_threshold(threshold, name)
        k = round(threshold * self.num_fine_bins)
        if k / self.num_fine_bins != threshold:  # as_threshold guarantees 0 < k <= K
            raise ValueError(f"{name}={threshold!r} must be a fine-bin edge k/"
                             f"{self.num_fine_bins} for exact thresholded metrics")
        return k

    def reliability(self, num_bins: int = DEFAULT_NUM_BINS) -> dict:
        """Reliability-diagram data per coarse bin (DDN paper eq. 13–14), numpy arrays.

        Returns ``edges`` (num_bins + 1), ``count``, ``mean_confidence`` = conf(D_k) (eq. 14)
        and ``accuracy`` = freq(D_k) (eq. 13); the last two are nan for empty bins.
        """
        num_bins = self._coarse_bins(num_bins)
        coarse = self._coarse(num_bins)
        count = coarse[0]
        correct = self._state[0, 1].view(num_bins, -1).sum(1).numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_conf = np.where(count > 0, coarse[1] / count, np.nan)
            accuracy = np.where(count > 0, correct / count, np.nan)
        return {"edges": np.arange(num_bins + 1, dtype=np.float64) / num_bins, "count": count,
                "mean_confidence": mean_conf, "accuracy": accuracy}

    def risk_coverage(self):
        """Risk–coverage curve (DDN paper Fig. 3): numpy ``(coverage, risk)``.

        Samples are kept in descending confidence; one point per non-empty fine bin: the
        fraction kept and the error rate among them. :meth:`compute`'s AURC is the area
        under this curve with each tie group (fine bin) in random order, in expectation.
        """
        n = self._state[0].flip(1).numpy()  # descending confidence
        keep = n.sum(0) > 0
        kept = np.cumsum(n.sum(0))[keep]
        wrong = np.cumsum(n[0])[keep]
        return kept / kept[-1] if kept.size else kept, wrong / np.maximum(kept, 1)

    def ranking_metrics(self) -> dict:
        """``AUROC``, ``AUPR_In``, ``AUPR_Out`` and ``AURC`` (see :meth:`compute`), which need
        no coarse bins or threshold; nan where undefined (and all nan without samples)."""
        wrong, right = self._state[0].numpy()
        return {"AUROC": _auroc(right[::-1], wrong[::-1]),
                "AUPR_In": _average_precision(right[::-1], wrong[::-1]),
                "AUPR_Out": _average_precision(wrong, right),
                "AURC": _aurc(right[::-1], wrong[::-1])}

    def compute(self, num_bins: int = DEFAULT_NUM_BINS, threshold: float = 0.5) -> dict:
        """All metrics as ``{name: float}``.

        * ``ECE`` = Σ_k |D_k|/N · |freq(D_k) − conf(D_k)| (DDN eq. 13–14, L1 form of eq. 15);
          ``MSCE`` = Σ_k |D_k|/N · |freq − conf|² (eq. 15); ``MCE`` = max over non-empty
          bins of |freq − conf| (§III). ``num_bins`` coarse bins, exact.
        * ``NLL`` = mean Bernoulli log-loss of the confidence as P(correct):
          −[y log c + (1−y) log(1−c)], logs clipped at ``LOG_EPS`` (scikit-learn ``log_loss``).
        * ``NLL_DDN`` = −1/N Σ log f^ŷ(x_i) (DDN eq. 16): mean −log of the confidence of the
          predicted class, whether right or wrong (a confidence measure, not a likelihood of
          the labels; the paper notes it does not reflect calibration).
        * ``Brier`` = mean (c − y)².
        * ``AUROC``, ``AUPR_In`` (correct positive, score c), ``AUPR_Out`` (wrong positive,
          score −c) as in the gradient-metrics paper §2; AUPR is average precision
          Σ (R_n − R_{n−1}) P_n (scikit-learn's ``average_precision_score``).
        * ``AURC``: area under the risk–coverage curve, (1/N) Σ_i risk(top i), ties in
          expectation over their order.
        * At ``threshold`` (success-prediction paper §3.3, confident = c > threshold):
          ``accuracy`` = (tp+tn)/N, ``precision`` = tp/(tp+fp), ``recall`` = tp/(tp+fn),
          ``F0.5`` = (1+β²)tp / ((1+β²)tp + β²fn + fp), β = 0.5. These four say little
          about the confidence when nearly everything is called confident (then accuracy =
          precision = the success rate), so two more expose it: ``coverage`` = (tp+fp)/N, the
          share called confident, and ``failure_detection`` = tn/(tn+fp), the share of wrong
          predictions called unconfident (the specificity of "unconfident" as a failure flag).
        * ``count``, ``mean_confidence``, ``success_rate`` (fraction correct) and, when
          entropies were given to :meth:`update`, ``mean_entropy``.

        Raises ValueError when no sample was accumulated, when ``num_bins`` does not divide
        the fine bins or ``threshold`` is not a fine edge.
        """
        n_total = float(self._state[0].sum())
        if n_total == 0:
            raise ValueError("CalibrationStats.compute: no samples were accumulated "
                             "(empty input, or everything masked out)")
        num_bins = self._coarse_bins(num_bins)
        coarse = self._coarse(num_bins)
        k = self._edge_index(threshold)
        s = self._numpy()
        wrong, right = s["count"]
        n_right = right.sum()

        bin_n = coarse[0]
        bin_right = right.reshape(num_bins, -1).sum(1)
        gap = np.abs(bin_right - coarse[1])  # |D_k| · |freq(D_k) − conf(D_k)|
        full = bin_n > 0
        out = {
            "ECE": gap.sum() / n_total,
            "MSCE": (gap[full] ** 2 / bin_n[full]).sum() / n_total,
            "MCE": (gap[full] / bin_n[full]).max(),
            "NLL": (s["sum_neg_log_conf"][1].sum() + s["sum_neg_log_one_minus_conf"][0].sum())
            / n_total,
            "NLL_DDN": s["sum_neg_log_conf"].sum() / n_total,
            "Brier": (s["sum_conf_sq"].sum() - 2 * s["sum_conf"][1].sum() + n_right) / n_total,
            **self.ranking_metrics(),
        }
        tp, fp = right[k:].sum(), wrong[k:].sum()
        fn, tn = right[:k].sum(), wrong[:k].sum()
        b2 = F_BETA ** 2
        out.update({
            "accuracy": (tp + tn) / n_total,
            "precision": _ratio(tp, tp + fp),
            "recall": _ratio(tp, tp + fn),
            "F0.5": _ratio((1 + b2) * tp, (1 + b2) * tp + b2 * fn + fp),
            "coverage": (tp + fp) / n_total,
            "failure_detection": _ratio(tn, tn + fp),
            "count": n_total,
            "mean_confidence": s["sum_conf"].sum() / n_total,
            "success_rate": n_right / n_total,
        })
        if self._entropy[1] > 0:
            out["mean_entropy"] = float(self._entropy[0] / self._entropy[1])
        return {name: float(value) for name, value in out.items()}


def _ratio(num, den) -> float:
    return float(num / den) if den > 0 else math.nan


def _auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a positive > score of a negative) + ½ P(tie); groups in descending score."""
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return math.nan
    pos_above = np.cumsum(pos) - pos
    return float((neg * (pos_above + 0.5 * pos)).sum() / (n_pos * n_neg))


def _average_precision(pos: np.ndarray, neg: np.ndarray) -> float:
    """Σ_n (R_n − R_{n−1}) P_n over tie groups in descending score (nan without positives)."""
    n_pos = pos.sum()
    if n_pos == 0:
        return math.nan
    tp, fp = np.cumsum(pos), np.cumsum(neg)
    hit = pos > 0
    return float((pos[hit] / n_pos * tp[hit] / (tp[hit] + fp[hit])).sum())


def _aurc(right: np.ndarray, wrong: np.ndarray) -> float:
    """(1/N) Σ_i risk(top i) in descending confidence, expected over orders within ties.

    A group of n samples (w wrong) after C samples (W wrong) adds, by linearity of the
    expected error count W + m·w/n at its m-th sample,
    Σ_{m=1..n} (W + m r)/(C + m) = n r + (W − r C)(ψ(C+n+1) − ψ(C+1)), r = w/n.
    """
    n = right + wrong
    if n.sum() == 0:
        return math.nan
    keep = n > 0
    before = (np.cumsum(n) - n)[keep]
    wrong_before = (np.cumsum(wrong) - wrong)[keep]
    n, wrong = n[keep], wrong[keep]
    r = wrong / n
    digamma = torch.special.digamma
    harmonic = (digamma(torch.from_numpy(before + n + 1)) - digamma(torch.from_numpy(before + 1)))
    total = (wrong + (wrong_before - r * before) * harmonic.numpy()).sum()
    return float(total / n.sum())
