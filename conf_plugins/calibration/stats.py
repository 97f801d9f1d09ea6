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

The fine-bin index is :mod:`.binning`, the input checks :mod:`.checks`, the ranking metrics
:mod:`.ranking` and the all-reduce :mod:`.reduce`; this module holds the statistics.
"""

import math

import numpy as np
import torch

from .binning import bin_index, upper_edges
from .bootstrap import as_records_matrix, column_sums, project_columns, sparse_rows
from .checks import as_count, as_tensor, as_threshold, validated_pairs
from .kernel import fused_kernel
from .ranking import augrc, aurc, auroc, average_precision, coverage_at_risk, risk_at_coverage
from .reduce import sum_over_ranks

DEFAULT_FINE_BINS = 6000
LOG_EPS = float(np.finfo(np.float64).eps)
FORMAT_VERSION = 1
F_BETA = 0.5  # success-prediction paper §3.3: precision weighted double
DEFAULT_COVERAGE = 0.8  # risk_at_coverage: the selective risk at 80 % coverage
DEFAULT_RISK = 0.05  # coverage_at_risk: the largest coverage with selective risk <= 5 %
DEFAULT_NUM_BINS = 10  # coarse bins of ECE / MSCE / MCE everywhere (DDN paper §III: M = 10)
_CHUNK = 1 << 18  # samples per pass: bounds temporaries (~8 MB) and keeps them in cache
# the keys of CalibrationStats.compute (plus "mean_entropy" when entropies were given)
METRIC_NAMES = (
    "ECE",
    "MSCE",
    "MCE",
    "NLL",
    "NLL_DDN",
    "Brier",
    "AUROC",
    "AUPR_In",
    "AUPR_Out",
    "AURC",
    "AUGRC",
    "risk_at_coverage",
    "coverage_at_risk",
    "adaptive_ECE",
    "accuracy",
    "precision",
    "recall",
    "F0.5",
    "coverage",
    "failure_detection",
    "count",
    "mean_confidence",
    "success_rate",
)
_STATS = ("count", "sum_conf", "sum_conf_sq", "sum_neg_log_conf", "sum_neg_log_one_minus_conf")
STATS_PER_BIN = 2 * len(_STATS)  # (wrong, correct) x statistics: a record has this x K entries


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
            raise ValueError(
                f"{name}={num_bins} must divide the {self.num_fine_bins} fine "
                "bins so that coarse bins are exact (e.g. 10, 15, 20, 25, 30, 50)"
            )
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
        return self.add_bin_sums(sums[:, : 2 * K])

    def add_bin_sums(self, sums: torch.Tensor) -> "CalibrationStats":
        """Add per-bin sums as the fused kernels return them: (5, 2K) float64, columns
        (wrong, correct) x K fine bins, rows count, Σv, Σv², Σlog v, Σlog(1 − v)."""
        K = self.num_fine_bins
        if sums.shape != (len(_STATS), 2 * K) or sums.dtype != torch.float64:
            raise ValueError(
                f"bin sums must be float64 of shape ({len(_STATS)}, {2 * K}), "
                f"got {sums.dtype} {tuple(sums.shape)}"
            )
        sums = sums.clone()
        sums[3:].neg_()  # Σ log -> Σ −log
        self._state += sums.reshape(len(_STATS), 2, K).cpu()
        return self

    def _accumulate(self, sums, conf, corr, mask):
        """Add one chunk (flat, validated) to ``sums`` (stat x (2K + 1)): one pass of the fused
        kernel for float32 CPU values when it is built, else a few passes + scatter."""
        K = self.num_fine_bins
        kernel = fused_kernel() if conf.dtype == torch.float32 and not conf.is_cuda else None
        if kernel is not None:
            empty = torch.empty(0, dtype=torch.bool)
            sums[:, : 2 * K] += kernel.bin_statistics(
                conf.contiguous(),
                corr.to(torch.bool).contiguous(),
                empty if mask is None else mask.contiguous(),
                upper_edges(K, torch.float32, "cpu"),
                LOG_EPS,
            )
            return
        index = bin_index(conf, K).add_(corr, alpha=K)
        if mask is not None:
            index.masked_fill_(~mask, 2 * K)
        conf64 = conf.to(torch.float64)
        ones = torch.ones((), dtype=torch.float64, device=conf.device).expand_as(conf64)
        # scatter_add_ of ones, not bincount: 3x faster on CPU (bench/seg_metric_throughput.py)
        for row, weight in enumerate(
            (
                ones,
                conf64,
                conf64 * conf64,
                conf.clamp(min=LOG_EPS).log_(),
                (1 - conf).clamp_(min=LOG_EPS).log_(),
            )
        ):
            sums[row].scatter_add_(0, index, weight.to(torch.float64))

    def _add_entropy(self, entropy, shape, mask):
        ent = as_tensor(entropy, "entropy")
        if ent.shape != shape:
            raise ValueError(f"entropy has shape {tuple(ent.shape)}, expected {tuple(shape)}")
        ent = ent.to(torch.float64)
        if mask is not None:
            ent = torch.where(mask.to(ent.device), ent, torch.zeros((), dtype=ent.dtype, device=ent.device))
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
            raise ValueError(
                f"cannot merge statistics with {other.num_fine_bins} fine bins "
                f"into statistics with {self.num_fine_bins}"
            )
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
        self._state.copy_(flat[: self._state.numel()].view_as(self._state))
        self._entropy.copy_(flat[self._state.numel() :])
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
            raise ValueError(
                f"CalibrationStats state has format version "
                f"{state.get('format_version')!r}, expected {FORMAT_VERSION}"
            )
        if state.get("num_fine_bins") != self.num_fine_bins:
            raise ValueError(
                f"CalibrationStats state has {state.get('num_fine_bins')!r} fine "
                f"bins, this object has {self.num_fine_bins}"
            )
        missing = [n for n in _STATS + ("entropy_sum", "entropy_count") if n not in state]
        if missing:
            raise ValueError(f"CalibrationStats state lacks {missing}")
        tensors = [torch.as_tensor(state[n], dtype=torch.float64) for n in _STATS]
        if any(t.shape != (2, self.num_fine_bins) for t in tensors):
            raise ValueError(f"CalibrationStats state tensors must have shape (2, {self.num_fine_bins})")
        entropy = torch.tensor(
            [float(state["entropy_sum"]), float(state["entropy_count"])], dtype=torch.float64
        )
        new = torch.stack(tensors)
        if not (torch.isfinite(new).all() and torch.isfinite(entropy).all()):
            raise ValueError("CalibrationStats state holds NaN or inf")
        if not ((new >= 0).all() and (entropy >= 0).all()):
            raise ValueError("CalibrationStats state holds negative sums or counts")
        if not ((new[0] == new[0].round()).all() and entropy[1] == entropy[1].round()):
            raise ValueError("CalibrationStats state holds non-integer counts")
        slack = 1e-9 * (1 + new[0])
        if not ((new[1] <= new[0] + slack).all() and (new[2] <= new[0] + slack).all()):
            raise ValueError(
                "CalibrationStats state is inconsistent: a bin's sum of "
                "confidences exceeds its count (confidences are <= 1)"
            )
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
            raise ValueError(
                f"{name}={threshold!r} must be a fine-bin edge k/"
                f"{self.num_fine_bins} for exact thresholded metrics"
            )
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
        return {
            "edges": np.arange(num_bins + 1, dtype=np.float64) / num_bins,
            "count": count,
            "mean_confidence": mean_conf,
            "accuracy": accuracy,
        }

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
        counts = self._state[0].numpy()[None]
        return {
            name: math.nan if np.isnan(value[0]) else float(value[0])
            for name, value in ranking_metrics_of_counts(counts).items()
        }

    def compute(
        self,
        num_bins: int = DEFAULT_NUM_BINS,
        threshold: float = 0.5,
        coverage: float = DEFAULT_COVERAGE,
        risk: float = DEFAULT_RISK,
    ) -> dict:
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
          expectation over their order; ``AUGRC`` the same with the generalized risk (Traub
          et al. 2024); ``risk_at_coverage`` the risk of the top ⌈``coverage``·N⌉,
          ``coverage_at_risk`` the largest coverage with risk <= ``risk``; ``adaptive_ECE``
          over ``num_bins`` equal-mass bins.
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
        if float(self._state[0].sum()) == 0:
            raise ValueError(
                "CalibrationStats.compute: no samples were accumulated "
                "(empty input, or everything masked out)"
            )
        num_bins = self._coarse_bins(num_bins)
        out = metrics_of_states(
            self._state.numpy()[None], num_bins, self._edge_index(threshold), coverage=coverage, risk=risk
        )
        # undefined values are math.nan itself (equal dicts compare equal, as before)
        out = {name: math.nan if np.isnan(value[0]) else float(value[0]) for name, value in out.items()}
        if self._entropy[1] > 0:
            out["mean_entropy"] = float(self._entropy[0] / self._entropy[1])
        return out

    def records_by_group(self, confidence, correct, groups, num_groups: int, mask=None) -> torch.Tensor:
        """Per-group statistics of samples as a sparse ``(num_groups, S)`` matrix: row g is the
        :meth:`as_record` of the samples of group g (e.g. one image's detections), i.e. what
        :meth:`update` with only them would give; nothing is accumulated into ``self``.
        Bounded memory: one column entry per sample and statistic; not coalesced (duplicate
        entries are sums)."""
        checked = validated_pairs(as_tensor(confidence, "confidence"), correct, mask, "confidence", "correct")
        K, S = self.num_fine_bins, len(_STATS) * 2 * self.num_fine_bins
        if checked is None:
            return sparse_rows([], [], [], (num_groups, S), coalesce=False)
        conf, corr, mask = (t.reshape(-1) if t is not None else None for t in checked)
        groups = torch.as_tensor(groups).reshape(-1).long().to(conf.device)
        if groups.numel() != conf.numel() or (
            groups.numel() and (groups.min() < 0 or groups.max() >= num_groups)
        ):
            raise ValueError(f"groups must give one index in [0, {num_groups}) per sample")
        if mask is not None:
            conf, corr, groups = conf[mask], corr[mask], groups[mask]
        index = bin_index(conf, K).add_(corr, alpha=K)
        conf64 = conf.to(torch.float64)
        terms = (
            torch.ones_like(conf64),
            conf64,
            conf64 * conf64,
            conf.clamp(min=LOG_EPS).log_().neg_(),
            (1 - conf).clamp_(min=LOG_EPS).log_().neg_(),
        )
        rows = groups.repeat(len(_STATS))
        cols = torch.cat([index + i * 2 * K for i in range(len(_STATS))])
        values = torch.cat([t.to(torch.float64) for t in terms])
        return sparse_rows(rows, cols, values, (num_groups, S), coalesce=False)

    def totals(self) -> tuple:
        """(wrong, correct, Σ confidence) over every sample, as floats."""
        wrong, right = self._state[0].sum(1).tolist()
        return wrong, right, float(self._state[1].sum())

    def as_record(self) -> torch.Tensor:
        """The statistics as one flat float64 vector (a row of a per-image record matrix for
        :mod:`~conf_plugins.calibration.bootstrap`); :func:`metrics_of_records` inverts it."""
        return self._state.reshape(-1).clone()


def ranking_metrics_of_counts(counts: np.ndarray, coverage=DEFAULT_COVERAGE, risk=DEFAULT_RISK) -> dict:
    """AUROC, AUPR_In, AUPR_Out, AURC, AUGRC, risk at ``coverage`` and coverage at ``risk``
    of ``counts`` (B, 2, K): per fine bin the number of wrong (row 0) and correct (row 1)
    predictions, in ascending confidence."""
    wrong, right = counts[:, 0], counts[:, 1]
    descending = right[:, ::-1], wrong[:, ::-1]
    return {
        "AUROC": auroc(*descending),
        "AUPR_In": average_precision(*descending),
        "AUPR_Out": average_precision(wrong, right),
        "AURC": aurc(*descending),
        "AUGRC": augrc(*descending),
        "risk_at_coverage": risk_at_coverage(*descending, coverage),
        "coverage_at_risk": coverage_at_risk(*descending, risk),
    }


def adaptive_ece(counts: np.ndarray, fine_conf: np.ndarray, num_bins: int) -> np.ndarray:
    """ECE over ``num_bins`` equal-mass bins (Nixon et al., CVPR-W 2019): fine bin j (in
    ascending confidence) joins adaptive bin ⌊num_bins · (predictions below it) / N⌋, so
    each holds about N / num_bins predictions, up to the fine bins (a fine bin is never
    split). ``counts`` (B, 2, K), ``fine_conf`` (B, K) Σ confidence per fine bin."""
    n = counts.sum(1)
    total = n.sum(-1, keepdims=True)
    before = np.cumsum(n, -1) - n
    with np.errstate(invalid="ignore", divide="ignore"):
        index = np.minimum(np.floor(num_bins * before / np.where(total > 0, total, 1)), num_bins - 1)
    index = index.astype(np.int64) + num_bins * np.arange(n.shape[0])[:, None]
    gap = np.zeros(n.shape[0] * num_bins)
    np.add.at(gap, index.reshape(-1), (counts[:, 1] - fine_conf).reshape(-1))
    return _ratio(np.abs(gap.reshape(n.shape[0], num_bins)).sum(-1), total[:, 0])


def _coarse_onehot(fine_index, num_fine_bins: int, num_bins: int) -> np.ndarray:
    """``(K, num_bins)`` one-hot: the coarse bin of each of the K fine bins ``fine_index``."""
    fine_index = np.asarray(fine_index)
    onehot = np.zeros((len(fine_index), num_bins))
    onehot[np.arange(len(fine_index)), fine_index // (num_fine_bins // num_bins)] = 1
    return onehot


def metrics_of_states(
    state: np.ndarray,
    num_bins: int,
    k: int,
    fine_index=None,
    num_fine_bins: int = None,
    coverage: float = DEFAULT_COVERAGE,
    risk: float = DEFAULT_RISK,
) -> dict:
    """Every metric of :meth:`CalibrationStats.compute` (but ``mean_entropy``) for a batch of
    states ``(B, stats, 2, K)`` (e.g. bootstrap resamples): ``{name: (B,) array}``; ``k`` is
    the fine edge of the threshold.

    ``fine_index`` (ascending) says which fine bins of ``num_fine_bins`` the K columns are,
    when empty fine bins were left out (they change no metric): a bootstrap of a few
    thousand detections then works on the few hundred occupied bins, not on all of them."""
    K = state.shape[-1]
    if fine_index is None:
        fine_index, num_fine_bins = np.arange(K), K
    coarse = state @ _coarse_onehot(fine_index, num_fine_bins, num_bins)
    return metrics_of_summaries(state[:, 0], coarse, k, fine_index, state[:, 1].sum(1), coverage, risk)


def metrics_of_summaries(
    counts: np.ndarray,
    coarse: np.ndarray,
    k: int,
    fine_index,
    fine_conf=None,
    coverage: float = DEFAULT_COVERAGE,
    risk: float = DEFAULT_RISK,
) -> dict:
    """The one implementation of the formulas of :meth:`CalibrationStats.compute`, from the
    two summaries they need: ``counts`` ``(B, 2, K)``, the wrong / correct counts of the fine
    bins ``fine_index`` (ascending; ranking metrics and the threshold ``k``, a fine edge), and
    ``coarse`` ``(B, stats, 2, num_bins)``, every statistic summed per coarse bin (ECE family,
    NLL, Brier, means). Both are linear in the samples: a bootstrap resamples them, not the
    whole state (:class:`StatsRecordMetrics`). ``fine_conf`` (B, K), Σ confidence per fine
    bin, adds the equal-mass ``adaptive_ECE`` (over as many bins as ``coarse`` has)."""
    wrong, right = counts[:, 0], counts[:, 1]
    n_total, n_right = wrong.sum(-1) + right.sum(-1), right.sum(-1)
    s = {name: coarse[:, i] for i, name in enumerate(_STATS)}  # (B, 2, bins)
    bin_n = s["count"].sum(1)
    gap = np.abs(s["count"][:, 1] - s["sum_conf"].sum(1))  # |D_k| · |freq(D_k) − conf(D_k)|
    full = bin_n > 0
    safe_n = np.where(full, bin_n, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_bin = np.where(full, gap / safe_n, -np.inf).max(-1)
        out = {
            "ECE": gap.sum(-1) / n_total,
            "MSCE": np.where(full, gap**2 / safe_n, 0.0).sum(-1) / n_total,
            "MCE": np.where(np.isfinite(per_bin), per_bin, np.nan),
            "NLL": (s["sum_neg_log_conf"][:, 1].sum(-1) + s["sum_neg_log_one_minus_conf"][:, 0].sum(-1))
            / n_total,
            "NLL_DDN": s["sum_neg_log_conf"].sum((-2, -1)) / n_total,
            "Brier": (s["sum_conf_sq"].sum((-2, -1)) - 2 * s["sum_conf"][:, 1].sum(-1) + n_right) / n_total,
            **ranking_metrics_of_counts(counts, check_level(coverage, "coverage"), check_level(risk, "risk")),
        }
        if fine_conf is not None:
            out["adaptive_ECE"] = adaptive_ece(counts, fine_conf, coarse.shape[-1])
        above = np.asarray(fine_index) >= k
        tp, fp = right[:, above].sum(-1), wrong[:, above].sum(-1)
        fn, tn = right[:, ~above].sum(-1), wrong[:, ~above].sum(-1)
        b2 = F_BETA**2
        out.update(
            {
                "accuracy": (tp + tn) / n_total,
                "precision": _ratio(tp, tp + fp),
                "recall": _ratio(tp, tp + fn),
                "F0.5": _ratio((1 + b2) * tp, (1 + b2) * tp + b2 * fn + fp),
                "coverage": (tp + fp) / n_total,
                "failure_detection": _ratio(tn, tn + fp),
                "count": n_total,
                "mean_confidence": s["sum_conf"].sum((-2, -1)) / n_total,
                "success_rate": n_right / n_total,
            }
        )
    return out


class StatsRecordMetrics:
    """Metrics of summed :meth:`CalibrationStats.as_record` rows ``(B, S)``, and the same
    through two small linear summaries of each record (:func:`metrics_of_summaries`): the
    counts of the occupied fine bins and every statistic per coarse bin. A bootstrap
    (:func:`~conf_plugins.calibration.bootstrap.resampled_metrics`) resamples those instead
    of the S = 10 x fine-bins columns: at COCO scale a few thousand columns, not 60 000."""

    def __init__(
        self,
        num_fine_bins: int = DEFAULT_FINE_BINS,
        num_bins: int = DEFAULT_NUM_BINS,
        threshold=0.5,
        coverage: float = DEFAULT_COVERAGE,
        risk: float = DEFAULT_RISK,
    ):
        stats = CalibrationStats(num_fine_bins)
        self.num_bins, _ = stats.check_metric_args(num_bins, threshold)
        self.num_fine_bins, self.k = num_fine_bins, stats._edge_index(threshold)
        self.coverage, self.risk = check_level(coverage, "coverage"), check_level(risk, "risk")
        self.size = self.record_size = len(_STATS) * 2 * num_fine_bins

    def summaries(self, totals: torch.Tensor) -> tuple:
        """``([(columns, size)], metrics_of_sums)``: per summary a map of the S record columns
        to its ``size`` columns (-1: dropped; see :func:`project_columns`), and the metrics
        of a list of summed summaries ``[(B, size)]``. ``totals`` are the column sums of the
        records to resample: the counts keep their occupied fine bins (empty ones change no
        metric)."""
        K, nb = self.num_fine_bins, self.num_bins
        if totals.shape[-1] != self.size:
            raise ValueError(
                f"records of {totals.shape[-1]} statistics, expected {self.size} ({K} fine bins)"
            )
        occupied = totals[: 2 * K].reshape(2, K).sum(0) > 0
        num_occupied = int(occupied.sum())
        position = torch.full((K,), -1, dtype=torch.long)
        position[occupied] = torch.arange(num_occupied)
        column = torch.arange(self.size)
        stat, correct, fine = column // (2 * K), column // K % 2, column % K
        counts = torch.where((stat == 0) & occupied[fine], correct * num_occupied + position[fine], -1)
        coarse = (stat * 2 + correct) * nb + fine // (K // nb)
        fine_conf = torch.where((stat == 1) & occupied[fine], position[fine], -1)  # both rows
        fine_index = np.flatnonzero(occupied.numpy())

        def metrics_of_sums(sums):
            count_sums, coarse_sums, conf_sums = (np.asarray(p, dtype=np.float64) for p in sums)
            B = count_sums.shape[0]
            return metrics_of_summaries(
                count_sums.reshape(B, 2, num_occupied),
                coarse_sums.reshape(B, len(_STATS), 2, nb),
                self.k,
                fine_index,
                conf_sums,
                self.coverage,
                self.risk,
            )

        columns = [(counts, 2 * num_occupied), (coarse, len(_STATS) * 2 * nb), (fine_conf, num_occupied)]
        return columns, metrics_of_sums

    def __call__(self, records) -> dict:
        records = as_records_matrix(records)
        columns, metrics_of_sums = self.summaries(column_sums(records))
        return metrics_of_sums([project_columns(records, c, n) for c, n in columns])


def metrics_of_records(
    records, num_fine_bins: int = DEFAULT_FINE_BINS, num_bins: int = DEFAULT_NUM_BINS, threshold: float = 0.5
) -> dict:
    """The metrics of summed :meth:`CalibrationStats.as_record` rows ``(B, S)`` (what
    :mod:`~conf_plugins.calibration.bootstrap` resamples)."""
    return StatsRecordMetrics(num_fine_bins, num_bins, threshold)(records)


def check_level(value, name: str) -> float:
    """A coverage or risk level in (0, 1], else ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"{name} must lie in (0, 1], got {value!r}")
    return float(value)


def _ratio(num, den):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)
