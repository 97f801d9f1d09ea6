"""mmsegmentation components: success heads, the PoS segmentor, the snapshot hook, the
MC-dropout segmentor, the TTA merge, the four-panel visualizer, the calibration metric, the
image corruptions and the built-in demo dataset. Import (or ``custom_imports``) registers
them and lets torch's safe loader read mmengine checkpoints (conf_plugins.compat)."""

from conf_plugins.compat import allow_mmengine_checkpoint_globals

allow_mmengine_checkpoint_globals()

from . import losses as _losses  # noqa: F401  (registers UncertaintyWeightedLoss)
from .corruption import ImageCorruption, with_corruption
from .demo_data import (
    DemoCityscapesDataset,
    DemoCityscapesDepthDataset,
    generate_demo_segmentation,
)
from .gradient_maps import pixel_gradient_maps, plot_gradient_heatmap
from .hooks import SuccessSnapshotHook, success_head_of
from .mc_dropout import MCDropoutEncoderDecoder, mc_dropout_statistics
from .metric import SegCalibrationMetric
from .segmentor import CalibratedEncoderDecoder, SuccessEncoderDecoder
from .success_head import (
    ASPPSuccessHead,
    DepthwiseSeparableASPPSuccessHead,
    FCNSuccessHead,
    SuccessBranchMixin,
    success_target,
)
from .tta import ConfidenceSegTTAModel
from .visualization import ConfidenceSegVisualizer, draw_confidence_panels

__all__ = [
    "CalibratedEncoderDecoder",
    "ASPPSuccessHead",
    "ConfidenceSegTTAModel",
    "ConfidenceSegVisualizer",
    "draw_confidence_panels",
    "DemoCityscapesDataset",
    "DemoCityscapesDepthDataset",
    "DepthwiseSeparableASPPSuccessHead",
    "FCNSuccessHead",
    "ImageCorruption",
    "MCDropoutEncoderDecoder",
    "SegCalibrationMetric",
    "SuccessBranchMixin",
    "SuccessEncoderDecoder",
    "SuccessSnapshotHook",
    "generate_demo_segmentation",
    "pixel_gradient_maps",
    "mc_dropout_statistics",
    "plot_gradient_heatmap",
    "success_head_of",
    "success_target",
    "with_corruption",
]
