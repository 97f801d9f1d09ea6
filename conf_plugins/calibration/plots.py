"""PNG plots: reliability diagram (DDN paper Fig. 2, 4), risk–coverage curves (DDN paper
Fig. 3) and confidence heat-maps (success-prediction paper Fig. 4).

Figures are drawn on the Agg canvas directly (``matplotlib.figure.Figure``), so importing or
calling these never touches pyplot's global state or the user's backend.
"""

import os

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .stats import DEFAULT_NUM_BINS, CalibrationStats


def _save(fig: Figure, path) -> str:
    path = os.fspath(path)
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=100)
    return path


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.float() if x.is_floating_point() and x.dtype != torch.float64 else x
        x = x.numpy()
    return np.asarray(x)


def plot_reliability(stats_or_reliability, path, num_bins: int = DEFAULT_NUM_BINS, title: str = None) -> str:
    """Reliability diagram: accuracy per confidence bin against the diagonal, the gap to each
    bin's mean confidence shaded, ECE in the legend; below it the confidence histogram.

    ``stats_or_reliability`` is a :class:`CalibrationStats` (binned into ``num_bins``) or the
    dict of :meth:`CalibrationStats.reliability`. Returns ``path``.
    """
    rel = (
        stats_or_reliability.reliability(num_bins)
        if isinstance(stats_or_reliability, CalibrationStats)
        else stats_or_reliability
    )
    edges, count = np.asarray(rel["edges"]), np.asarray(rel["count"], dtype=np.float64)
    acc, conf = np.asarray(rel["accuracy"]), np.asarray(rel["mean_confidence"])
    total = count.sum()
    if total <= 0:
        raise ValueError("plot_reliability: no samples to plot")
    full = count > 0
    ece = (count[full] * np.abs(acc[full] - conf[full])).sum() / total
    left, width = edges[:-1], np.diff(edges)

    fig = Figure(figsize=(5, 6))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.bar(
        left[full],
        acc[full],
        width[full],
        align="edge",
        color="tab:blue",
        edgecolor="black",
        label=f"accuracy (ECE = {ece:.4f})",
    )
    top.bar(
        left[full],
        conf[full] - acc[full],
        width[full],
        bottom=acc[full],
        align="edge",
        color="tab:red",
        alpha=0.3,
        edgecolor="tab:red",
        hatch="//",
        label="gap",
    )
    top.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=title or "Reliability diagram")
    top.legend(loc="upper left")
    bottom.bar(left, count / total, width, align="edge", color="tab:gray", edgecolor="black")
    bottom.set(xlabel="confidence", ylabel="fraction of samples")
    fig.tight_layout()
    return _save(fig, path)


def plot_risk_coverage(curves: dict, path, title: str = None) -> str:
    """Risk–coverage curves of several methods in one plot, AURC in the legend.

    ``curves`` maps a method name to its :class:`CalibrationStats`. Returns ``path``.
    """
    if not curves:
        raise ValueError("plot_risk_coverage: no curves given")
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    for name, stats in curves.items():
        coverage, risk = stats.risk_coverage()
        if coverage.size == 0:
            raise ValueError(f"plot_risk_coverage: '{name}' has no samples")
        aurc = stats.ranking_metrics()["AURC"]
        ax.plot(
            coverage, risk, marker="." if coverage.size < 50 else None, label=f"{name} (AURC = {aurc:.4f})"
        )
    ax.set(xlim=(0, 1), xlabel="coverage", ylabel="risk (error rate)", title=title or "Risk–coverage")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def plot_confidence_heatmap(image, confidence, path, title: str = None, mask=None) -> str:
    """Image (HxWx3 uint8, or None) beside the per-pixel confidence heat-map with a colorbar.

    ``mask`` (HxW bool, True = valid) greys out ignored pixels. Returns ``path``.
    """
    conf = _to_numpy(confidence).astype(np.float64)
    if conf.ndim != 2:
        raise ValueError(f"confidence must be HxW, got shape {conf.shape}")
    if image is not None:
        image = _to_numpy(image)
        if image.shape != conf.shape + (3,) or image.dtype != np.uint8:
            raise ValueError(
                f"image must be uint8 of shape {conf.shape + (3,)}, got {image.dtype} {image.shape}"
            )
    valid = np.isfinite(conf)
    if mask is not None:
        mask = _to_numpy(mask)
        if mask.shape != conf.shape or mask.dtype != np.bool_:
            raise ValueError(f"mask must be bool of shape {conf.shape}, got {mask.dtype} {mask.shape}")
        valid &= mask

    panels = 2 if image is not None else 1
    fig = Figure(figsize=(5 * panels, 4))
    axes = np.atleast_1d(fig.subplots(1, panels))
    if image is not None:
        axes[0].imshow(image)
        axes[0].set_title("image")
    cmap = matplotlib.colormaps["viridis"].copy()
    cmap.set_bad("lightgray")
    shown = axes[-1].imshow(np.ma.masked_where(~valid, conf), cmap=cmap, vmin=0, vmax=1)
    axes[-1].set_title("confidence")
    fig.colorbar(shown, ax=axes[-1], fraction=0.046, pad=0.04)
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_position_map(stats, path, title: str = None) -> str:
    """D-ECE heat-map of a :class:`~conf_plugins.calibration.detection_stats.DetectionBinStats`
    with bins (confidence, cx, cy, ...): per cell of the normalised box centre, the mean
    |precision − confidence| over its confidence bins (grey: no detection). Returns ``path``."""
    grid = _to_numpy(stats.position_map()).astype(np.float64).T  # rows: cy (top = 0)
    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    cmap = matplotlib.colormaps["magma"].copy()
    cmap.set_bad("lightgray")
    shown = ax.imshow(
        np.ma.masked_invalid(grid),
        cmap=cmap,
        vmin=0,
        vmax=max(np.nanmax(grid) if np.isfinite(grid).any() else 1.0, 1e-6),
        extent=(0, 1, 1, 0),
    )
    ax.set_xlabel("box centre x / image width")
    ax.set_ylabel("box centre y / image height")
    ax.set_title(title or "D-ECE by box position")
    fig.colorbar(shown, ax=ax, label="|precision − confidence|")
    return _save(fig, path)


def plot_classwise_reliability(panels: dict, path, class_names=None, title: str = None) -> str:
    """Per-class reliability diagrams: one panel per entry of ``panels`` (label ->
    :class:`~conf_plugins.calibration.detection_stats.DetectionBinStats`), one curve per class
    of accuracy against mean confidence over its non-empty confidence bins (marker area ∝
    detections). Returns ``path``."""
    fig = Figure(figsize=(3.2 * len(panels), 3.4))
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
    for ax, (label, stats) in zip(axes, panels.items()):
        marginal = stats.confidence_marginal() if len(stats.bins) > 1 else stats
        count, conf, correct = (_to_numpy(marginal.state[i]) for i in range(3))
        for c in range(marginal.num_groups):
            used = count[c] > 0
            if not used.any():
                continue
            name = class_names[c] if class_names else f"class {c}"
            ax.plot(
                conf[c, used] / count[c, used],
                correct[c, used] / count[c, used],
                "-",
                marker="o",
                markersize=3,
                label=name,
            )
        ax.plot([0, 1], [0, 1], "k:", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("confidence")
    axes[0].set_ylabel("accuracy")
    axes[0].legend(fontsize=7, loc="upper left")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
