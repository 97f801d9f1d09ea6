"""detectron2 components: dropout box head, MC-dropout inference, the DDN student, the
calibration evaluator and the built-in demo dataset. Importing registers them."""
from conf_plugins.compat import check_pillow_for_detectron2

check_pillow_for_detectron2()  # before detectron2.data is imported anywhere below

from .box_head import DropoutFastRCNNConvFCHead, sample_predictions  # noqa: E402
from .config import add_ddn_config  # noqa: E402
from .ddn_rcnn import DDNRCNN  # noqa: E402
from .ddn_roi_heads import DDNROIHeads  # noqa: E402
from .demo_data import generate_demo_detection, register_demo_detection  # noqa: E402
from .evaluator import DetectionCalibrationEvaluator  # noqa: E402
from .gradient_roi_heads import GRADIENT_FIELDS, GradientMetricsROIHeads  # noqa: E402
from .mc_dropout import MCDropoutROIHeads  # noqa: E402
from .teacher import DropoutTeacher  # noqa: E402

__all__ = [
    "DDNRCNN", "DDNROIHeads", "DetectionCalibrationEvaluator", "DropoutFastRCNNConvFCHead",
    "GRADIENT_FIELDS", "GradientMetricsROIHeads",
    "DropoutTeacher", "MCDropoutROIHeads", "add_ddn_config", "generate_demo_detection",
    "register_demo_detection", "sample_predictions",
]
