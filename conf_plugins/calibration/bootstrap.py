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
    "coverage_at_risk",
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
    "LRP",
    "LRP_loc",
    "LRP_FP",
    "LRP_FN",
    "oLRP",
    "oLRP_loc",
    "oLRP_FP",
    "oLRP_FN",
    "LaACE",
    "D-ECE",
    "adaptive_ECE",
    "AUGRC",
    "risk_at_coverage",
    "image_AURC",
    "selective_risk",
)

# differences this small are floating-point rounding of equal statistics, not a difference
NUMERICAL_ZERO = 1e-9

MetricFn = Callable[[torch.Tensor], dict]


def sparse_rows(rows, cols, values, shape, coalesce: bool = True) -> torch.Tensor:
    """A sparse COO ``shape`` matrix, duplicates summed when ``coalesce`` (a sort of every
    entry; the per-image records of detections skip it: everything that reads them is
    linear and takes duplicates as sums). Invariant checks are skipped explicitly (the
    indices are built in range by our code)."""
    with torch.sparse.check_sparse_tensor_invariants(enable=False):
        indices = torch.stack(
            [torch.as_tensor(rows).long().reshape(-1), torch.as_tensor(cols).long().reshape(-1)]
        )
        out = torch.sparse_coo_tensor(
            indices.cpu(), torch.as_tensor(values, dtype=torch.float64).reshape(-1).cpu(), tuple(shape)
        )
        return out.coalesce() if coalesce else out


def as_records_matrix(records) -> torch.Tensor:
    """A ``(rows, S)`` tensor (dense or sparse) of records given as a tensor or an array."""
    return records if isinstance(records, torch.Tensor) else torch.as_tensor(np.asarray(records, np.float64))


def column_sums(records: torch.Tensor) -> torch.Tensor:
    """Dense ``(S,)`` column sums of a dense or sparse ``(rows, S)`` matrix."""
    if records.is_sparse:
        out = torch.zeros(records.shape[1], dtype=torch.float64)
        return out.index_add_(0, records._indices()[1], records._values().double())
    return records.double().sum(0)


def project_columns(records, columns: torch.Tensor, size: int) -> torch.Tensor:
    """``(rows, size)``: column j of ``records`` added into column ``columns[j]`` (dropped
    where -1): a linear summary of each row; sparse records give a dense summary when it has
    at most ``MAX_COMPACT_ENTRIES`` entries, else a sparse one."""
    if records.is_sparse:
        index, values = records._indices(), records._values()
        target = columns[index[1]]
        keep = target >= 0
        rows, target, values = index[0][keep], target[keep], values[keep].double()
        entries = records.shape[0] * size
        if entries > MAX_COMPACT_ENTRIES or values.numel() < DENSE_FRACTION * entries:
            return sparse_rows(rows, target, values, (records.shape[0], size), coalesce=False)
        out = torch.zeros(records.shape[0], size, dtype=torch.float64)
        return out.index_put_((rows, target), values, accumulate=True)
    keep = columns >= 0
    out = torch.zeros(records.shape[0], size, dtype=torch.float64)
    return out.index_add_(1, columns[keep], records[:, keep].double())


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
        return per_image.to(torch.float64)  # duplicates are summed by every reader
    return per_image.to(torch.float64)


class _Summed:
    """``weights @ records`` for many weight chunks, the records prepared once: dense as they
    are; sparse ones as their non-empty columns only when those fit densely (then a chunk
    costs O(b · images · C), not O(b · S)), else as a CSR transpose (O(b · non-zeros))."""

    def __init__(self, records: torch.Tensor):
        self.shape, self.dense, self.columns, self.csr = records.shape, None, None, None
        if not records.is_sparse:
            self.dense = records
            return
        index, values = records._indices(), records._values()
        columns, position = torch.unique(index[1], return_inverse=True)
        entries = records.shape[0] * len(columns)
        if entries <= MAX_COMPACT_ENTRIES and values.numel() >= DENSE_FRACTION * entries:
            self.columns = columns
            self.dense = torch.zeros(records.shape[0], len(columns), dtype=torch.float64)
            self.dense.index_put_((index[0], position), values, accumulate=True)
        else:
            with torch.sparse.check_sparse_tensor_invariants(enable=False):
                self.csr = records.t().coalesce().to_sparse_csr()

    def __call__(self, weights: torch.Tensor) -> torch.Tensor:
        """(b, images) -> (b, S), a fresh tensor."""
        if self.csr is not None:
            return (self.csr @ weights.t()).t()
        sums = weights @ self.dense
        if self.columns is None:
            return sums
        out = torch.zeros(weights.shape[0], self.shape[1], dtype=torch.float64)
        out[:, self.columns] = sums
        return out


MAX_COMPACT_ENTRIES = 20_000_000  # images x non-empty columns kept dense (160 MB); else CSR
DENSE_FRACTION = 0.05  # sparser than this, a CSR product beats a dense one


def resampled_metrics(
    per_image,
    metric_fn: MetricFn,
    num_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    chunk: int = 100,
    weights: torch.Tensor = None,
) -> dict:
    """``{name: (B,) array}`` of ``metric_fn`` over ``B`` resamples of the images.

    ``metric_fn`` maps summed statistics ``(b, S)`` to ``{name: (b,) array}``. When it has
    ``summaries(column totals) -> ([(columns, size)], metrics_of_sums)`` (e.g.
    :class:`~conf_plugins.calibration.stats.StatsRecordMetrics`), the records are first
    projected onto those smaller linear summaries (:func:`project_columns`) and the
    resamples sum those: the same metrics, a fraction of the work."""
    records = _as_records(per_image)
    if weights is None:
        weights = resample_counts(records.shape[0], num_resamples, seed)
    elif weights.shape[1] != records.shape[0]:
        raise ValueError(f"bootstrap weights cover {weights.shape[1]} images, the records {records.shape[0]}")
    if hasattr(metric_fn, "summaries"):
        columns, metrics_of_sums = metric_fn.summaries(column_sums(records))
        parts = [_Summed(project_columns(records, c, n)) for c, n in columns]
        evaluate = lambda w: metrics_of_sums([p(w) for p in parts])  # noqa: E731
    else:
        whole = _Summed(records)
        evaluate = lambda w: metric_fn(whole(w))  # noqa: E731
    parts_out = []
    for i in range(0, weights.shape[0], chunk):
        part = evaluate(weights[i : i + chunk])
        parts_out.append({name: np.array(value, dtype=np.float64, copy=True) for name, value in part.items()})
    return {
        name: np.concatenate([np.asarray(p[name], dtype=np.float64).reshape(-1) for p in parts_out])
        for name in parts_out[0]
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
    point_a, point_b = (metric_fn(_Summed(r)(ones)) for r in (a, b))
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
