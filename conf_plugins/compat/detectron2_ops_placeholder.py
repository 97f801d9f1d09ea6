"""Placeholder for detectron2's compiled-ops module ``detectron2._C``.

Installed as ``detectron2/_C.py`` by ``tools/env/detectron2_wheel.py`` when detectron2 comes
from its pure-Python PyPI copy (no C++/CUDA sources). It answers the version queries of
``detectron2.utils.collect_env`` and raises :class:`MissingCompiledOpError` naming the op for
anything else. Official detectron2 (built from source) ships a real ``_C`` and never sees this
file. Self-contained on purpose: it is copied into detectron2's package.
"""

IS_PLACEHOLDER = True

# Which feature each compiled op belongs to, so the error can say what is unavailable.
_FEATURES = {
    "box_iou_rotated": "rotated boxes (pairwise_iou_rotated)",
    "nms_rotated": "rotated boxes (nms_rotated)",
    "roi_align_rotated_forward": "rotated boxes (ROIAlignRotated)",
    "roi_align_rotated_backward": "rotated boxes (ROIAlignRotated)",
    "deform_conv_forward": "deformable convolution (DeformConv)",
    "deform_conv_backward_input": "deformable convolution (DeformConv)",
    "deform_conv_backward_filter": "deformable convolution (DeformConv)",
    "modulated_deform_conv_forward": "deformable convolution (ModulatedDeformConv)",
    "modulated_deform_conv_backward": "deformable convolution (ModulatedDeformConv)",
    "InstanceAnnotation": "fast COCO evaluation (COCOeval_opt); use COCOEvaluator(use_fast_impl=False)",
    "COCOevalEvaluateImages": "fast COCO evaluation (COCOeval_opt); use COCOEvaluator(use_fast_impl=False)",
    "COCOevalAccumulate": "fast COCO evaluation (COCOeval_opt); use COCOEvaluator(use_fast_impl=False)",
}


class MissingCompiledOpError(RuntimeError, AttributeError):
    """A detectron2 compiled op was used, but this detectron2 has none.

    Also an AttributeError, so ``hasattr(_C, name)`` stays False for feature probes.
    """


def get_compiler_version() -> str:
    return "none (pure-Python detectron2: compiled ops are a placeholder)"


def get_cuda_version() -> str:
    return "none"


def has_cuda() -> bool:
    return False


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    feature = _FEATURES.get(name, "a compiled op")
    raise MissingCompiledOpError(
        f"detectron2._C.{name} is unavailable: {feature} needs detectron2's compiled ops, and "
        "this detectron2 is the pure-Python v0.6 package with a placeholder for them. Install "
        "official detectron2 from source (see README, 'GPU machines') to use it.")
