"""detectron2 components: dropout box head, MC-dropout inference, the DDN student, the
ROI heads with class probabilities / uncertainty per detection, the calibration evaluator and
the built-in demo dataset. Importing registers them."""

from .box_head import DropoutFastRCNNConvFCHead, sample_predictions
from .config import add_ddn_config
from .ddn_rcnn import DDNRCNN
from .ddn_roi_heads import DDNROIHeads
from .demo_data import generate_demo_detection, register_demo_detection
from .evaluator import DetectionCalibrationEvaluator
from .gradient_roi_heads import GRADIENT_FIELDS, GradientMetricsROIHeads
from .mc_dropout import MCDropoutROIHeads
from .probability_heads import ProbabilityROIHeads
from .teacher import DropoutTeacher

__all__ = [
    "DDNRCNN",
    "DDNROIHeads",
    "DetectionCalibrationEvaluator",
    "DropoutFastRCNNConvFCHead",
    "GRADIENT_FIELDS",
    "GradientMetricsROIHeads",
    "DropoutTeacher",
    "MCDropoutROIHeads",
    "ProbabilityROIHeads",
    "add_ddn_config",
    "generate_demo_detection",
    "register_demo_detection",
    "sample_predictions",
]
