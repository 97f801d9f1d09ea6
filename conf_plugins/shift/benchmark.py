"""Summaries and plots of a corruption × severity grid (framework-free).

A grid result is a list of rows ``{"corruption": name, "severity": s, "metrics": {...}}``;
severity 0 is the clean data (corruption ``"none"``). Per severity the benchmark reports the
mean over corruptions and their spread (min and max), the way Michaelis et al. (2019) report
mPC (mean performance under corruption) beside the clean value.
"""

import math

import numpy as np

# the metrics a shift view plots and tabulates, per framework (keys of tools/shift_benchmark.py's rows)
MAIN_METRICS = {
    "det": ("calibration/ECE@IoU0.5", "calibration/LaECE@IoU0.5", "bbox/AP"),
    "seg": ("calib/ECE", "calib/AUROC", "mIoU"),
}


def severity_summary(rows, metric: str) -> list:
    """``[(severity, mean, min, max, n), ...]`` of ``metric`` over corruptions, severity 0
    (clean) first; nan values are left out of the mean and spread."""
    by_severity = {}
    for row in rows:
        value = row["metrics"].get(metric)
        if value is not None and not math.isnan(value):
            by_severity.setdefault(int(row["severity"]), []).append(float(value))
    return [
        (s, float(np.mean(v)), float(np.min(v)), float(np.max(v)), len(v))
        for s, v in sorted(by_severity.items())
    ]


def grid_table(rows, metrics) -> list:
    """Markdown lines: one row per (corruption, severity), one column per metric."""
    lines = ["| corruption | severity | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
    for row in sorted(rows, key=lambda r: (r["severity"] > 0, r["corruption"], r["severity"])):
        cells = [row["metrics"].get(m) for m in metrics]
        lines.append(
            f"| {row['corruption']} | {row['severity']} | "
            + " | ".join(
                "n/a" if c is None or (isinstance(c, float) and math.isnan(c)) else f"{c:.4f}" for c in cells
            )
            + " |"
        )
    return lines


def plot_against_severity(results_by_method: dict, metric: str, path: str, title: str = None):
    """One line per method: ``metric`` (mean over corruptions) against severity 0–5, with the
    min–max spread over corruptions shaded. ``results_by_method``: {label: grid rows}."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    for label, rows in results_by_method.items():
        summary = severity_summary(rows, metric)
        if not summary:
            continue
        s, mean, lo, hi, _ = (np.array(v) for v in zip(*summary))
        ax.plot(s, mean, marker="o", label=label)
        ax.fill_between(s, lo, hi, alpha=0.15)
    ax.set_xlabel("corruption severity (0 = clean)")
    ax.set_ylabel(metric)
    ax.set_xticks(range(6))
    ax.set_title(title or f"{metric} under corruption (mean, min-max over corruptions)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    FigureCanvasAgg(fig).print_png(path)
    return path
