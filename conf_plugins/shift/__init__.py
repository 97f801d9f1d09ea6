"""Framework-free distribution shift: standard image corruptions (numpy + imagecorruptions)
and the summaries / plots of a corruption × severity grid."""

from .benchmark import grid_table, plot_against_severity, severity_summary
from .corruptions import (
    BENCHMARK,
    CORRUPTIONS,
    HELD_OUT,
    SEVERITIES,
    check_corruption,
    corrupt_image,
    parse_corruptions,
)

__all__ = [
    "BENCHMARK",
    "CORRUPTIONS",
    "HELD_OUT",
    "SEVERITIES",
    "check_corruption",
    "corrupt_image",
    "grid_table",
    "parse_corruptions",
    "plot_against_severity",
    "severity_summary",
]
