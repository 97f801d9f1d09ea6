"""Percentile-bootstrap intervals over images, and paired intervals of differences.

An evaluation keeps one record of sufficient statistics per image (a row of ``per_image``,
shape ``(images, S)``, dense or sparse); a metric is a function of their sum. A bootstrap
resample draws ``n`` images with replacement, i.e. weights ``w`` (multinomial counts summing
to ``n``), and the resampled statistics are ``w @ per_image``: the metrics of ``B``
resamples come from one matrix product, chunked. The 95 % interval is the 2.5 and 97.5
percentiles of the resampled metrics (Efron & Tibshirani 1993, ch. 13). Images, not pixels
or detections, are the unit: pixels and detections of one image are not independent.

A **paired** bootstrap (two methods evaluated on the same images) resamples both with the
same weights and takes percentiles of the *difference*: "A is better than B" only when that
interval excludes 0 (:func:`verdict`).
"""

import math
from typing import Callable

import numpy as np
import torch

DEFAULT_RESAMPLES = 1000
DEFAULT_LEVEL = 0.95
# metrics where a lower value is better; every other metric is higher-is-better
HIGHER_IS_BETTER = (
    "AUROC",
    "AUPR_In",
    "AUPR_Out",
    "accuracy",
    "precision",
    "recall",
    "F0.5",
    "failure_detection",
    "AP",
    "mIoU",
)
LOWER_IS_BETTER = (
    "ECE",
    "MSCE",
    "MCE",
    "NLL",
    "NLL_DDN",
    "Brier",
    "AURC",
    "classwise_ECE",
    "LaECE",
    "LaACE",
    "D-ECE",
    "adaptive_ECE",
    "AUGRC",
    "risk",
)

# differences this small are floating-point rounding of equal statistics, not a difference
NUMERICAL_ZERO = 1e-9

MetricFn = Callable[[torch.Tensor], dict]


def sparse_rows(rows, cols, values, shape) -> torch.Tensor:
    """A coalesced sparse COO ``shape`` matrix (duplicates summed): the per-image records of
    detections, a few entries per image. Invariant checks are skipped explicitly (the
    indices are built in range by our code)."""
    with torch.sparse.check_sparse_tensor_invariants(enable=False):
        indices = torch.stack(
            [torch.as_tensor(rows).long().reshape(-1), torch.as_tensor(cols).long().reshape(-1)]
        )
        return torch.sparse_coo_tensor(
            indices.cpu(), torch.as_tensor(values, dtype=torch.float64).reshape(-1).cpu(), tuple(shape)
        ).coalesce()


def check_bootstrap_args(num_resamples, level) -> tuple:
    if (
        isinstance(num_resamples, bool)
        or not isinstance(num_resamples, (int, np.integer))
        or num_resamples < 2
    ):
        raise ValueError(f"num_resamples must be an integer >= 2, got {num_resamples!r}")
    if not (isinstance(level, (float, int)) and 0 < level < 1):
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    return int(num_resamples), float(level)


def resample_counts(num_images: int, num_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> torch.Tensor:
    """``(num_resamples, num_images)`` float64 counts: how often each image is drawn in each
    resample of ``num_images`` draws with replacement (seeded: the same on every machine and
    process for the same arguments)."""
    if num_images < 1:
        raise ValueError("a bootstrap needs per-image records of at least one image; got none")
    generator = torch.Generator().manual_seed(int(seed))
    draws = torch.randint(num_images, (num_resamples, num_images), generator=generator)
    counts = torch.zeros(num_resamples, num_images, dtype=torch.float64)
    return counts.scatter_add_(1, draws, torch.ones_like(counts))


def _as_records(per_image) -> torch.Tensor:
    if not isinstance(per_image, torch.Tensor):
        per_image = torch.as_tensor(np.asarray(per_image))
    if per_image.dim() != 2:
        raise ValueError(
            f"per-image records must be a (images, statistics) matrix, got shape {tuple(per_image.shape)}"
        )
    if per_image.shape[0] == 0:
        raise ValueError("a bootstrap needs per-image records of at least one image; got none")
    if per_image.is_sparse:
        with torch.sparse.check_sparse_tensor_invariants(enable=False):
            return per_image.to(torch.float64).coalesce()
    return per_image.to(torch.float64)


class _Compact:
    """Sparse records as their non-empty columns only (dense ``(images, C)`` + the column
    indices): ``weights @ records`` then costs O(b · images · C), not O(b · S)."""

    def __init__(self, records: torch.Tensor):
        index, values = records.indices(), records.values()
        self.columns, position = torch.unique(index[1], return_inverse=True)
        self.dense = torch.zeros(records.shape[0], len(self.columns), dtype=torch.float64)
        self.dense.index_put_((index[0], position), values, accumulate=True)
        self.shape = records.shape
        self._buffer = None  # zero outside self.columns: reused across chunks

    def weighted_sums(self, weights):
        b = weights.shape[0]
        if self._buffer is None or self._buffer.shape[0] < b:
            self._buffer = torch.zeros(b, self.shape[1], dtype=torch.float64)
        out = self._buffer[:b]
        out[:, self.columns] = weights @ self.dense
        return out


def _weighted_sums(records, weights: torch.Tensor) -> torch.Tensor:
    """``weights @ records``: (b, images) x (images, S) -> (b, S), records dense, compact or
    sparse."""
    if isinstance(records, _Compact):
        return records.weighted_sums(weights)
    if records.is_sparse:
        with torch.sparse.check_sparse_tensor_invariants(enable=False):
            return torch.sparse.mm(records.t(), weights.t()).t()
    return weights @ records


MAX_COMPACT_ENTRIES = 20_000_000  # images x non-empty columns kept dense (160 MB); else sparse


def resampled_metrics(
    per_image,
    metric_fn: MetricFn,
    num_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    chunk: int = 100,
    weights: torch.Tensor = None,
) -> dict:
    """``{name: (B,) array}`` of ``metric_fn`` over ``B`` resamples of the images.

    ``metric_fn`` maps summed statistics ``(b, S)`` to ``{name: (b,) array}``."""
    records = _as_records(per_image)
    if weights is None:
        weights = resample_counts(records.shape[0], num_resamples, seed)
    elif weights.shape[1] != records.shape[0]:
        raise ValueError(f"bootstrap weights cover {weights.shape[1]} images, the records {records.shape[0]}")
    if records.is_sparse:
        columns = torch.unique(records.indices()[1]).numel()
        if records.shape[0] * columns <= MAX_COMPACT_ENTRIES:
            records = _Compact(records)
    parts = []
    for i in range(0, weights.shape[0], chunk):  # copies: the sums of a chunk reuse one buffer
        part = metric_fn(_weighted_sums(records, weights[i : i + chunk]))
        parts.append({name: np.array(value, dtype=np.float64, copy=True) for name, value in part.items()})
    return {
        name: np.concatenate([np.asarray(p[name], dtype=np.float64).reshape(-1) for p in parts])
        for name in parts[0]
    }


def percentile_interval(samples, level: float = DEFAULT_LEVEL) -> tuple:
    """The ``(1 − level)/2`` and ``(1 + level)/2`` percentiles; nan resamples (a metric
    undefined on that resample, e.g. AUROC without a wrong prediction) are left out, and the
    interval is nan when more than half are nan."""
    samples = np.asarray(samples, dtype=np.float64)
    finite = samples[~np.isnan(samples)]
    if finite.size < samples.size / 2 or finite.size == 0:
        return (math.nan, math.nan)
    lo, hi = np.percentile(finite, [50 * (1 - level), 50 * (1 + level)])
    return (float(lo), float(hi))


def bootstrap_intervals(
    per_image,
    metric_fn: MetricFn,
    num_resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> dict:
    """``{name: (lo, hi)}``: percentile-bootstrap intervals over images of every metric."""
    num_resamples, level = check_bootstrap_args(num_resamples, level)
    samples = resampled_metrics(per_image, metric_fn, num_resamples, seed)
    return {name: percentile_interval(values, level) for name, values in samples.items()}


def paired_bootstrap(
    per_image_a,
    per_image_b,
    metric_fn: MetricFn,
    num_resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> dict:
    """Intervals of ``metric(A) − metric(B)`` for two methods evaluated on the **same images**
    (row i of both is image i): both resampled with the same weights.

    Returns ``{name: {"difference": point, "interval": (lo, hi), "verdict": str}}``."""
    num_resamples, level = check_bootstrap_args(num_resamples, level)
    a, b = _as_records(per_image_a), _as_records(per_image_b)
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"a paired bootstrap needs the same images for both methods: {a.shape[0]} vs {b.shape[0]} records"
        )
    weights = resample_counts(a.shape[0], num_resamples, seed)
    ones = torch.ones(1, a.shape[0], dtype=torch.float64)
    point_a, point_b = (metric_fn(_weighted_sums(r, ones)) for r in (a, b))
    sa = resampled_metrics(a, metric_fn, weights=weights)
    sb = resampled_metrics(b, metric_fn, weights=weights)
    out = {}
    for name in sa:
        difference = float(
            np.asarray(point_a[name]).reshape(-1)[0] - np.asarray(point_b[name]).reshape(-1)[0]
        )
        interval = percentile_interval(sa[name] - sb[name], level)
        out[name] = {"difference": difference, "interval": interval, "verdict": verdict(name, interval)}
    return out


def verdict(name: str, interval) -> str:
    """``"A better"``, ``"B better"`` or ``"no significant difference"`` from the interval of
    A − B (lower is better for ``LOWER_IS_BETTER``, higher for ``HIGHER_IS_BETTER``); metrics
    with no better direction (coverage, counts, means) get ``"no direction"``."""
    lo, hi = interval
    if math.isnan(lo) or math.isnan(hi) or lo <= NUMERICAL_ZERO and hi >= -NUMERICAL_ZERO:
        return "no significant difference"
    base = name.split("@")[0].split("/")[-1]
    if base not in LOWER_IS_BETTER and base not in HIGHER_IS_BETTER:
        return "no direction"
    a_lower = hi < 0
    lower_better = base in LOWER_IS_BETTER
    return "A better" if a_lower == lower_better else "B better"
