"""mmsegmentation components: success heads, the PoS segmentor, the snapshot hook, the
MC-dropout segmentor, the TTA merge, the four-panel visualizer, the calibration metric and the built-in demo dataset. Import (or ``custom_imports``) registers
them and lets torch's safe loader read mmengine checkpoints (conf_plugins.compat)."""
from conf_plugins.compat import allow_mmengine_checkpoint_globals

allow_mmengine_checkpoint_globals()

from .demo_data import (DemoCityscapesDataset, DemoCityscapesDepthDataset,  # noqa: E402
                        generate_demo_segmentation)
from .gradient_maps import pixel_gradient_maps, plot_gradient_heatmap  # noqa: E402
from .hooks import SuccessSnapshotHook, success_head_of  # noqa: E402
from .mc_dropout import MCDropoutEncoderDecoder, mc_dropout_statistics  # noqa: E402
from .metric import SegCalibrationMetric  # noqa: E402
from .segmentor import SuccessEncoderDecoder  # noqa: E402
from .tta import ConfidenceSegTTAModel  # noqa: E402
from .visualization import ConfidenceSegVisualizer, draw_confidence_panels  # noqa: E402
from .success_head import (ASPPSuccessHead, DepthwiseSeparableASPPSuccessHead,  # noqa: E402
                           FCNSuccessHead, SuccessBranchMixin, success_target)
from . import losses as _losses  # noqa: E402,F401  (registers UncertaintyWeightedLoss)

__all__ = [
    "ASPPSuccessHead", "ConfidenceSegTTAModel", "ConfidenceSegVisualizer", "draw_confidence_panels", "DemoCityscapesDataset", "DemoCityscapesDepthDataset",
    "DepthwiseSeparableASPPSuccessHead",
    "FCNSuccessHead", "MCDropoutEncoderDecoder", "SegCalibrationMetric", "SuccessBranchMixin", "SuccessEncoderDecoder",
    "SuccessSnapshotHook", "generate_demo_segmentation", "pixel_gradient_maps",
    "mc_dropout_statistics", "plot_gradient_heatmap", "success_head_of", "success_target",
]
