"""Framework-free calibration core (torch + numpy + matplotlib only).

Sufficient statistics and metrics (:class:`CalibrationStats`), temperature scaling, the
Bayes-binning probability of success, normalised entropy and PNG plots. Framework adapters
(``conf_plugins.detectron2``, ``conf_plugins.mmseg``) call into this package, never the reverse.
"""

from .bayes_binning import BayesBinningCalibrator
from .entropy import entropy_from_logits, normalized_entropy
from .pixel_confidence import pixel_confidence
from .plots import plot_confidence_heatmap, plot_reliability, plot_risk_coverage
from .stats import DEFAULT_FINE_BINS, LOG_EPS, CalibrationStats
from .temperature import TemperatureScaler

__all__ = [
    "BayesBinningCalibrator",
    "CalibrationStats",
    "DEFAULT_FINE_BINS",
    "LOG_EPS",
    "TemperatureScaler",
    "entropy_from_logits",
    "normalized_entropy",
    "pixel_confidence",
    "plot_confidence_heatmap",
    "plot_reliability",
    "plot_risk_coverage",
]
