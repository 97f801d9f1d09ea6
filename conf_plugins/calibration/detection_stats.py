"""Detection calibration beyond one score histogram: class-wise ECE, LaECE and D-ECE.

All three are sums over a grid of bins of ``|Σ confidence − Σ target|``, so one mergeable
state serves them: per (group, bin) the count, Σ confidence, Σ correct and Σ IoU (float64,
O(groups × bins) memory; two states merge by addition, distributed evaluation is one
all-reduce). Bins are equal-width ``((k-1)/J, k/J]`` with the edge convention of
:class:`~conf_plugins.calibration.CalibrationStats` (exact values against float64 edges).

* **Class-wise ECE**: for each class c with detections, ECE_c = Σ_j (|B_cj| / |D_c|) ·
  |acc(B_cj) − conf(B_cj)| over ``num_bins`` equal-width confidence bins ((k-1)/J, k/J]
  (DDN paper eq. 13–14 within one class); reported as the mean over those classes.
* **LaECE** (localisation-aware ECE; Oksuz et al., CVPR 2023, eq. 3, the definition Kuzucu
  et al., ECCV 2024, evaluate with): LaECE_c = Σ_j (|B_cj| / |D_c|) · |conf(B_cj) − IoU(B_cj)|,
  IoU(B) the mean IoU of the bin's detections with their matched GT box, 0 for a detection
  matched to none; mean over classes. The confidence should predict the IoU, not just a hit.
* **LaACE** (Kuzucu et al., ECCV 2024, their ``is_ace`` evaluation, "ACE_0"): every
  detection its own bin, LaACE_c = (1/|D_c|) Σ_i |conf_i − IoU_i|; mean over classes.
* **D-ECE** (detection ECE; Küppers et al., CVPR-W 2020, eq. 5, netcal's ``ECE`` with
  several features): bins over confidence × the box's normalised centre (cx, cy) (and
  optionally size), D-ECE = Σ_b (|B_b| / N) · |prec(B_b) − conf(B_b)| over every non-empty
  joint bin. :meth:`DetectionBinStats.position_map` gives the per-cell miscalibration map.
"""

import math

import numpy as np
import torch

from .binning import bin_index
from .bootstrap import as_records_matrix, column_sums, project_columns, sparse_rows
from .reduce import sum_over_ranks

_SUMS = ("count", "sum_conf", "sum_correct", "sum_iou", "sum_abs_conf_minus_iou")


class DetectionBinStats:
    """Sums of (confidence, correct, IoU) per group (class) and per joint bin.

    Args:
        num_groups: number of classes (group index = class index).
        bins: bins per feature, confidence first; further features are values in [0, 1]
            (e.g. ``(10,)`` for class-wise / LaECE, ``(10, 5, 5)`` for confidence × cx × cy).
    """

    def __init__(self, num_groups: int, bins=(10,)):
        if num_groups < 1 or not bins or any(int(b) < 1 for b in bins):
            raise ValueError(f"need >= 1 group and >= 1 bin per feature, got {num_groups}, {bins}")
        self.num_groups, self.bins = int(num_groups), tuple(int(b) for b in bins)
        self.state = torch.zeros(len(_SUMS), self.num_groups, math.prod(self.bins), dtype=torch.float64)

    def update(self, confidence, correct, groups, iou=None, features=()):
        """Add N detections: confidence (N,) in [0, 1], correct (N,) bool, groups (N,) class
        indices, iou (N,) matched IoU (0 when unmatched), one (N,) tensor in [0, 1] per
        extra feature."""
        cells = self._cells(confidence, correct, groups, iou, features)
        if cells is not None:
            flat, weights = cells
            for row, weight in enumerate(weights):
                self.state[row].view(-1).scatter_add_(0, flat, weight)
        return self

    def records_by_image(
        self, images, num_images: int, confidence, correct, groups, iou=None, features=()
    ) -> torch.Tensor:
        """The statistics of each image's detections as rows of a sparse ``(num_images, S)``
        matrix (``images``: (N,) image index per detection); S = the size of ``state``.
        Nothing is accumulated into ``self``. Not coalesced: duplicate entries are sums."""
        S = self.state.numel()
        images = torch.as_tensor(images).long().reshape(-1)
        cells = self._cells(confidence, correct, groups, iou, features)
        if cells is None:
            return sparse_rows([], [], [], (num_images, S), coalesce=False)
        flat, weights = cells
        if images.numel() != flat.numel() or images.min() < 0 or images.max() >= num_images:
            raise ValueError(f"images must give one index in [0, {num_images}) per detection")
        cols = torch.cat([flat + row * self.state[0].numel() for row in range(len(weights))])
        return sparse_rows(
            images.repeat(len(weights)), cols, torch.cat(weights), (num_images, S), coalesce=False
        )

    def _cells(self, confidence, correct, groups, iou, features):
        """Validated ``(flat cell index (N,), [weight (N,) per sum])``, None without detections."""
        conf = torch.as_tensor(confidence).double().reshape(-1)
        n = conf.numel()
        correct = torch.as_tensor(correct).reshape(-1)
        groups = torch.as_tensor(groups).long().reshape(-1)
        iou = (
            torch.zeros(n, dtype=torch.float64) if iou is None else torch.as_tensor(iou).double().reshape(-1)
        )
        if len(features) != len(self.bins) - 1:
            raise ValueError(f"{len(self.bins) - 1} features expected, got {len(features)}")
        columns = [conf] + [torch.as_tensor(f).double().reshape(-1) for f in features]
        if any(c.numel() != n for c in columns + [iou]) or correct.numel() != n or groups.numel() != n:
            raise ValueError("confidence, correct, groups, iou and features differ in length")
        if n == 0:
            return None
        for name, c in zip(
            ["confidence"] + [f"feature {i}" for i in range(len(features))] + ["iou"], columns + [iou]
        ):
            if not (torch.isfinite(c).all() and (c >= 0).all() and (c <= 1).all()):
                raise ValueError(f"{name} must be finite and in [0, 1]")
        if (groups < 0).any() or (groups >= self.num_groups).any():
            raise ValueError(f"group (class) indices must be in [0, {self.num_groups})")
        cell = torch.zeros(n, dtype=torch.int64)
        for values, num_bins in zip(columns, self.bins):  # row-major joint bin
            cell = cell * num_bins + bin_index(values, num_bins)  # CalibrationStats' exact edges
        flat = groups * self.state.shape[2] + cell
        return flat, [torch.ones(n, dtype=torch.float64), conf, correct.double(), iou, (conf - iou).abs()]

    @property
    def record_size(self) -> int:
        """Columns of a :meth:`records_by_image` row."""
        return self.state.numel()

    def merge(self, other: "DetectionBinStats") -> "DetectionBinStats":
        if (other.num_groups, other.bins) != (self.num_groups, self.bins):
            raise ValueError("cannot merge statistics of different groups / bins")
        self.state += other.state
        return self

    def all_reduce(self, group=None) -> "DetectionBinStats":
        """Sum over the ranks of ``group`` (no-op without torch.distributed)."""
        flat = sum_over_ranks(self.state.reshape(-1), group)
        if flat is not None:
            self.state.copy_(flat.view_as(self.state))
        return self

    def confidence_marginal(self) -> "DetectionBinStats":
        """The same sums over confidence bins only (summed over the other features)."""
        out = DetectionBinStats(self.num_groups, self.bins[:1])
        out.state = self.state.reshape(len(_SUMS), self.num_groups, self.bins[0], -1).sum(dim=3)
        return out

    def _error(self, target: str, per_group: bool):
        if per_group and len(self.bins) > 1:  # class-wise metrics bin confidence only
            return self.confidence_marginal()._error(target, per_group)
        count, conf = self.state[0], self.state[1]
        gap = (conf - self.state[2 if target == "correct" else 3]).abs()  # n_b |conf_b - t_b|
        if not per_group:
            total = count.sum()
            return float(gap.sum() / total) if total > 0 else math.nan
        n = count.sum(dim=1)
        used = n > 0
        if not used.any():
            return math.nan
        return float((gap.sum(dim=1)[used] / n[used]).mean())

    def summaries(self, totals=None) -> tuple:
        """``([(columns, size)], metrics_of_sums)`` of :meth:`records_by_image` rows: the
        class × confidence-bin marginal (class-wise ECE, LaECE) and the class-pooled joint
        bins (D-ECE), the two linear summaries the metrics need (see
        :meth:`StatsRecordMetrics.summaries`; they do not depend on ``totals``)."""
        G, J = self.num_groups, self.bins[0]
        cells = math.prod(self.bins)
        rest = cells // J
        column = torch.arange(len(_SUMS) * G * cells)
        stat, cell = column // (G * cells), column % cells
        marginal = column // rest  # (stat, group, confidence bin)
        pooled = torch.where(stat < 3, stat * cells + cell, -1)  # count, Σ conf, Σ correct

        def metrics_of_sums(sums):
            m, p = (np.asarray(x, dtype=np.float64) for x in sums)
            B = m.shape[0]
            return self._metrics_of_summaries(m.reshape(B, len(_SUMS), G, J), p.reshape(B, 3, cells))

        return [(marginal, len(_SUMS) * G * J), (pooled, 3 * cells)], metrics_of_sums

    @staticmethod
    def _metrics_of_summaries(marginal, pooled) -> dict:
        """``classwise_ECE``, ``LaECE``, ``LaACE`` of the marginal ``(B, sums, groups, confidence bins)``
        and ``D-ECE`` of the pooled ``(B, 3, cells)``: ``{name: (B,)}``. Batched forms of
        :meth:`classwise_ece`, :meth:`laece`, :meth:`dece`."""
        out = {}
        with np.errstate(invalid="ignore", divide="ignore"):
            n = marginal[:, 0].sum(-1)  # (B, groups)
            used = n > 0
            for name, row in (("classwise_ECE", 2), ("LaECE", 3), ("LaACE", None)):
                gap = marginal[:, 4] if row is None else np.abs(marginal[:, 1] - marginal[:, row])
                per_class = gap.sum(-1) / np.where(used, n, 1)
                out[name] = np.where(
                    used.any(-1), np.where(used, per_class, 0).sum(-1) / np.maximum(used.sum(-1), 1), np.nan
                )
            total = pooled[:, 0].sum(-1)
            out["D-ECE"] = np.where(
                total > 0, np.abs(pooled[:, 1] - pooled[:, 2]).sum(-1) / np.where(total > 0, total, 1), np.nan
            )
        return out

    def metrics_of_records(self, records) -> dict:
        """``classwise_ECE``, ``LaECE`` and ``D-ECE`` of a batch of summed
        :meth:`records_by_image` rows ``(B, S)`` (e.g. bootstrap resamples): ``{name: (B,)}``."""
        records = as_records_matrix(records)
        columns, metrics_of_sums = self.summaries()
        return metrics_of_sums([project_columns(records, c, n) for c, n in columns])

    def classwise_ece(self) -> float:
        """Mean over classes with detections of each class's ECE (nan without detections)."""
        return self._error("correct", per_group=True)

    def laace(self) -> float:
        """Mean over classes with detections of the mean |confidence − IoU| (ACE_0)."""
        n = self.state[0].sum(dim=1)
        used = n > 0
        if not used.any():
            return math.nan
        return float((self.state[4].sum(dim=1)[used] / n[used]).mean())

    def laece(self) -> float:
        """Mean over classes with detections of |confidence − IoU| per bin (Oksuz et al. eq. 3)."""
        return self._error("iou", per_group=True)

    def dece(self) -> float:
        """D-ECE over every joint bin of every class pooled (Küppers et al. eq. 5)."""
        pooled = DetectionBinStats(1, self.bins)
        pooled.state = self.state.sum(dim=1, keepdim=True)
        return pooled._error("correct", per_group=False)

    def position_map(self):
        """(cx bins, cy bins) map of mean |precision − confidence| over the confidence bins of
        each position cell (count-weighted), nan for empty cells: netcal's 2-D heat-map.
        Needs bins (confidence, cx, cy, ...)."""
        if len(self.bins) < 3:
            raise ValueError("position_map needs bins (confidence, cx, cy)")
        shape = (len(_SUMS),) + self.bins
        grid = self.state.sum(dim=1).reshape(shape)
        grid = grid.sum(dim=tuple(range(4, len(shape)))) if len(shape) > 4 else grid
        count, gap = grid[0], (grid[1] - grid[2]).abs()  # (conf, cx, cy)
        n = count.sum(dim=0)
        out = gap.sum(dim=0) / n
        out[n == 0] = math.nan
        return out

    def state_dict(self) -> dict:
        return {"num_groups": self.num_groups, "bins": list(self.bins), "state": self.state.clone()}

    @classmethod
    def from_state_dict(cls, state: dict) -> "DetectionBinStats":
        out = cls(state["num_groups"], state["bins"])
        if tuple(state["state"].shape) != tuple(out.state.shape):
            raise ValueError(
                f"state of shape {tuple(state['state'].shape)} does not fit "
                f"{state['num_groups']} groups x bins {state['bins']}"
            )
        out.state = state["state"].double().clone()
        return out


class DetectionRecordMetrics:
    """The metric function of a detection evaluator's per-image records: each row the
    records of ``components`` side by side (:class:`StatsRecordMetrics` = a
    :meth:`CalibrationStats.as_record`, :class:`DetectionBinStats`, :class:`LRPStats`, each
    with the metric names taken from it, None = all): summed rows ``(B, S)`` ->
    ``{metric: (B,)}``. Bootstraps and paired comparisons resample the components' linear
    summaries (:meth:`summaries`) rather than the S columns."""

    def __init__(self, components):
        self.components = list(components)
        self.size = sum(c.record_size for c, _ in self.components)

    def summaries(self, totals: torch.Tensor) -> tuple:
        """As :meth:`StatsRecordMetrics.summaries`, ``totals`` the records' column sums."""
        if totals.shape[-1] != self.size:
            raise ValueError(f"records of {totals.shape[-1]} statistics, expected {self.size}")
        columns, evaluators, start = [], [], 0
        for component, names in self.components:
            stop = start + component.record_size
            own, metrics = component.summaries(totals[start:stop])
            for c, n in own:  # the component's columns within the whole record
                whole = torch.full((self.size,), -1, dtype=torch.long)
                whole[start:stop] = c
                columns.append((whole, n))
            evaluators.append((len(own), metrics, names))
            start = stop

        def metrics_of_sums(sums):
            out, first = {}, 0
            for count, metrics, names in evaluators:
                values = metrics(sums[first : first + count])
                out.update({k: v for k, v in values.items() if names is None or k in names})
                first += count
            return out

        return columns, metrics_of_sums

    def __call__(self, records) -> dict:
        records = as_records_matrix(records)
        columns, metrics_of_sums = self.summaries(column_sums(records))
        return metrics_of_sums([project_columns(records, c, n) for c, n in columns])


def detection_record_metrics(
    num_groups: int,
    bins,
    num_bins: int,
    num_fine_bins: int = None,
    localisation_bins: int = None,
    lrp_bins: int = None,
    tp_iou: float = None,
    coverage: float = None,
    risk: float = None,
) -> DetectionRecordMetrics:
    """The metric function of :class:`~conf_plugins.detectron2.evaluator.DetectionCalibrationEvaluator`
    records: the ECE family and ranking metrics, class-wise ECE and D-ECE over ``bins``,
    LaECE / LaACE over ``localisation_bins`` confidence bins and LRP / oLRP with τ =
    ``tp_iou`` (records written without the last two keep LaECE of ``bins``)."""
    from .lrp import LRPStats
    from .stats import DEFAULT_COVERAGE, DEFAULT_FINE_BINS, DEFAULT_RISK, StatsRecordMetrics

    stats = StatsRecordMetrics(
        num_fine_bins or DEFAULT_FINE_BINS,
        num_bins,
        coverage=DEFAULT_COVERAGE if coverage is None else coverage,
        risk=DEFAULT_RISK if risk is None else risk,
    )
    components = [(stats, None)]
    if localisation_bins is None:
        return DetectionRecordMetrics(components + [(DetectionBinStats(num_groups, bins), None)])
    components += [
        (DetectionBinStats(num_groups, bins), ("classwise_ECE", "D-ECE")),
        (DetectionBinStats(num_groups, (localisation_bins,)), ("LaECE", "LaACE")),
    ]
    if lrp_bins is not None:
        components.append((LRPStats(num_groups, lrp_bins, tp_iou), None))
    return DetectionRecordMetrics(components)
