"""Bayes binning: probability of success from a success score (success-prediction paper §3.2).

With M equal-width bins of the success score s in [0, 1] and per-bin counts of true
successes n_S and failures n_F on a calibration split,

    P(S|s) = P(s|S) / (P(s|S) + P(s|F) · P(F) / (1 − P(F))),
    P(s|S) = n_S[m] / N_S,  P(s|F) = n_F[m] / N_F,  P(F) = N_F / N         (§3.2)

for s in bin m. With these empirical priors the formula equals n_S[m] / (n_S[m] + n_F[m]),
the success frequency of the bin. Bins follow :mod:`.binning`: ``((m−1)/M, m/M]``, s = 0 in
the first bin (the paper writes ``[(m−1)/M, m/M)``; the two differ only for s exactly on an
edge).

Defined behaviour where the formula is not:

* **Empty bin** (no calibration sample scored there): linear interpolation between the PoS
  of the nearest non-empty bins on either side (by bin centre), the nearest one's value
  beyond the outermost non-empty bins. Falling back to the global prior P(S) instead would
  ignore the score and make the PoS jump between neighbouring scores; sparse bins occur in
  the tails, where the neighbours are the best evidence available.
* **P(F) = 0** (no failure at all): P(S|s) = 1 in every bin; **P(F) = 1**: 0 in every bin
  (the limits of the formula).
"""

import numpy as np
import torch

from .binning import bin_index
from .checks import as_count, as_unit_interval, validated_pairs
from .reduce import sum_over_ranks

FORMAT_VERSION = 1


class BayesBinningCalibrator:
    """Maps success scores to probabilities of success with the Bayes-binning rule (§3.2).

    Streaming: :meth:`update` accumulates per-bin success/failure counts (any number of
    batches, :meth:`all_reduce` across ranks); :meth:`predict` applies the fitted table.

    Args:
        num_bins: number M of equal-width score bins.
    """

    def __init__(self, num_bins: int = 10):
        self.num_bins = as_count(num_bins, "num_bins")
        self.reset()

    def reset(self) -> "BayesBinningCalibrator":
        """Forget all counts."""
        self.success_counts = torch.zeros(self.num_bins, dtype=torch.float64)
        self.failure_counts = torch.zeros(self.num_bins, dtype=torch.float64)
        self._table = None
        return self

    @property
    def count(self) -> int:
        return int((self.success_counts.sum() + self.failure_counts.sum()).item())

    def update(self, score, success, mask=None) -> "BayesBinningCalibrator":
        """Count (score, true success) pairs; same input rules as ``CalibrationStats.update``."""
        checked = validated_pairs(score, success, mask, "score", "success")
        if checked is None:
            return self
        s, ok, mask = checked
        M = self.num_bins
        index = bin_index(s, M).add_(ok, alpha=M).reshape(-1)
        if mask is not None:
            index.masked_fill_(~mask.reshape(-1), 2 * M)
        counts = torch.bincount(index, minlength=2 * M + 1)[: 2 * M].to("cpu", torch.float64)
        self.failure_counts += counts[:M]
        self.success_counts += counts[M:]
        self._table = None
        return self

    def fit(self, score, success, mask=None) -> "BayesBinningCalibrator":
        """:meth:`reset` then :meth:`update`."""
        return self.reset().update(score, success, mask)

    def all_reduce(self, group=None) -> "BayesBinningCalibrator":
        """Sum the counts over the ranks of ``group`` (no-op without torch.distributed)."""
        flat = sum_over_ranks(torch.cat([self.success_counts, self.failure_counts]), group)
        if flat is None:
            return self
        self.success_counts, self.failure_counts = flat.split(self.num_bins)
        self._table = None
        return self

    def probabilities(self) -> np.ndarray:
        """P(S|s) of each bin (float64, length M), empty bins filled as documented above."""
        if self._table is not None:
            return self._table.copy()
        n_s, n_f = self.success_counts.numpy(), self.failure_counts.numpy()
        total_s, total_f = n_s.sum(), n_f.sum()
        if total_s + total_f == 0:
            raise RuntimeError(
                "BayesBinningCalibrator has no counts: call fit()/update() on "
                "calibration data (or load_state_dict) before predict()"
            )
        filled = n_s + n_f > 0
        if total_f == 0:
            table = np.ones(self.num_bins)
        elif total_s == 0:
            table = np.zeros(self.num_bins)
        else:
            p_s_given_success = n_s[filled] / total_s
            p_s_given_failure = n_f[filled] / total_f
            p_fail = total_f / (total_s + total_f)
            pos = p_s_given_success / (p_s_given_success + p_s_given_failure * p_fail / (1 - p_fail))
            centres = (np.arange(self.num_bins) + 0.5) / self.num_bins
            table = np.interp(centres, centres[filled], pos)
        self._table = table
        return table.copy()

    def predict(self, score):
        """P(S|s) per element; same shape. torch in → torch out (same device, float dtype of
        the input, float32 for non-float input); numpy in → numpy float64 out."""
        table = torch.from_numpy(self.probabilities())
        is_numpy = not isinstance(score, torch.Tensor)
        s = as_unit_interval(score, "score")
        out_dtype = s.dtype if s.dtype in (torch.float32, torch.float64) else torch.float32
        if is_numpy:
            out_dtype = torch.float64
        pos = table.to(s.device).index_select(0, bin_index(s, self.num_bins).reshape(-1))
        pos = pos.view(s.shape).to(out_dtype)
        return pos.cpu().numpy() if is_numpy else pos

    def state_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "num_bins": self.num_bins,
            "success_counts": self.success_counts.clone(),
            "failure_counts": self.failure_counts.clone(),
        }

    def load_state_dict(self, state: dict) -> "BayesBinningCalibrator":
        """Replace the counts; ValueError if ``state`` does not match this calibrator."""
        if state.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"Bayes-binning state has format version "
                f"{state.get('format_version')!r}, expected {FORMAT_VERSION}"
            )
        if state.get("num_bins") != self.num_bins:
            raise ValueError(
                f"Bayes-binning state has {state.get('num_bins')!r} bins, this calibrator has {self.num_bins}"
            )
        counts = []
        for name in ("success_counts", "failure_counts"):
            if name not in state:
                raise ValueError(f"Bayes-binning state lacks '{name}'")
            c = torch.as_tensor(state[name]).to(torch.float64).cpu()
            if c.shape != (self.num_bins,):
                raise ValueError(
                    f"Bayes-binning '{name}' has shape {tuple(c.shape)}, expected ({self.num_bins},)"
                )
            if not (torch.isfinite(c).all() and (c >= 0).all() and (c == c.round()).all()):
                raise ValueError(f"Bayes-binning '{name}' must hold finite non-negative integer counts")
            counts.append(c.clone())
        self.success_counts, self.failure_counts = counts
        self._table = None
        return self

    @classmethod
    def from_state_dict(cls, state: dict) -> "BayesBinningCalibrator":
        if not isinstance(state.get("num_bins"), int):
            raise ValueError("Bayes-binning state lacks an integer 'num_bins'")
        return cls(state["num_bins"]).load_state_dict(state)

    def __repr__(self) -> str:
        return f"BayesBinningCalibrator(num_bins={self.num_bins}, count={self.count})"
