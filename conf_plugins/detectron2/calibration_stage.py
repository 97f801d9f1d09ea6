"""Calibration as a post-processing stage of any detectron2 detector, in output coordinates.

detectron2's meta-architectures end their inference with ``detector_postprocess``, which
rescales ``pred_boxes`` (and masks, keypoints) from the network input to the image's own
size and copies every other field as it is. A calibration applied inside the ROI heads is
therefore in the wrong frame whenever the test input is resized (``INPUT.MIN_SIZE_TEST``
800 in every COCO config). :class:`DetectionCalibrationStage` runs *after* that step, on
each output ``Instances``, as a forward hook of the model (public ``nn.Module`` API): it

1. rescales the per-detection box fields our ROI heads make in input coordinates
   (:data:`INPUT_FRAME_BOX_FIELDS`, e.g. the MC-dropout ``pred_box_std``) as
   ``detector_postprocess`` rescales ``pred_boxes``;
2. calibrates ``scores`` with its score calibrator
   (:class:`~conf_plugins.calibration.score_calibrators.DetectionScoreCalibrator`:
   temperature on the class-probability vector of ROI heads or on the sigmoid logit of dense
   heads; Platt / linear / histogram / isotonic on the score);
3. keeps the detections above their class's operating threshold (when asked);
4. adds conformal box intervals (``pred_boxes_inner`` / ``pred_boxes_outer``) around the
   output boxes and conformal class-label sets (``pred_class_sets``, (D, K) bool) from the
   class-probability vectors.

It works for every meta-architecture whose inference returns ``Instances``
(:data:`SUPPORTED_META_ARCHITECTURES` and their subclasses); the fitted state is buffers of
the stage, saved in the checkpoint under ``calibration_stage.`` with the fingerprint of the
whole model's weights and inference mode, and verified once per load / train-eval switch.
"""

import torch
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch import GeneralizedRCNN
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.structures import Boxes
from torch import nn

from conf_plugins.calibration.class_sets import ClassConformal
from conf_plugins.calibration.conformal import BoxConformal
from conf_plugins.calibration.fingerprint import FingerprintVerifiedOnce
from conf_plugins.calibration.score_calibrators import DetectionScoreCalibrator

from .config import validate_calibration_stage_config

STAGE = "calibration_stage"  # the stage's submodule name on the model (and state_dict prefix)
SUPPORTED_META_ARCHITECTURES = (GeneralizedRCNN, DenseDetector)  # RetinaNet, FCOS; PanopticFPN
SUPPORTED_NAMES = "GeneralizedRCNN (Faster / Mask / Cascade R-CNN, PanopticFPN), RetinaNet, FCOS"
INPUT_FRAME_BOX_FIELDS = ("pred_box_std",)  # (D, 4) XYXY pixels of the network input
# ROI heads named in a config -> our subclass that adds pred_class_probs (same weights)
CLASS_PROBABILITY_HEADS = {"StandardROIHeads": "ProbabilityROIHeads"}


def missing_class_probabilities(what: str) -> str:
    """The error message of ``what`` (temperature, class sets) on detections without class
    probabilities."""
    return (
        f"{what} needs each detection's class probabilities (pred_class_probs): ROI heads with "
        "MODEL.ROI_HEADS.OUTPUT_CLASS_PROBS True (StandardROIHeads or ours); these give none (Cascade's "
        "and dense heads), so use a map of the score (platt, linear, histogram, isotonic)"
    )


def check_supported(model):
    """ValueError naming the supported meta-architectures unless ``model`` is one."""
    if not isinstance(model, SUPPORTED_META_ARCHITECTURES):
        raise ValueError(
            f"{type(model).__name__} is not a detector whose inference returns Instances: "
            f"calibration supports {SUPPORTED_NAMES} and their subclasses"
        )


def score_kind(model) -> str:
    """'softmax' (ROI heads: K+1 class probabilities) or 'sigmoid' (dense heads)."""
    check_supported(model)
    return "sigmoid" if isinstance(model, DenseDetector) else "softmax"


def num_classes_of(model) -> int:
    check_supported(model)
    return model.num_classes if isinstance(model, DenseDetector) else model.roi_heads.num_classes


def inference_signature(model) -> str:
    """What, beside the weights, the model's detections depend on: its meta-architecture and
    the inference mode of its ROI heads (e.g. MC dropout's sample count)."""
    heads = getattr(model, "roi_heads", None)
    mode = ""
    if heads is not None:
        mode = heads.inference_signature() if hasattr(heads, "inference_signature") else type(heads).__name__
    return f"{type(model).__name__};{mode}"


def model_weights(model):
    """(name, tensor) of every weight and buffer of ``model`` but the stage's own."""
    return [(n, t) for n, t in model.state_dict().items() if not n.startswith(STAGE + ".")]


def rescale_input_frame_fields(instances, input_size):
    """Scale :data:`INPUT_FRAME_BOX_FIELDS` from the network input (``input_size`` (H, W))
    to ``instances.image_size``, as ``detector_postprocess`` scales ``pred_boxes``."""
    (out_h, out_w), (in_h, in_w) = instances.image_size, input_size
    if (out_h, out_w) == (in_h, in_w):
        return instances
    for name in INPUT_FRAME_BOX_FIELDS:
        if instances.has(name):
            value = instances.get(name)
            scale = torch.tensor([out_w / in_w, out_h / in_h] * 2, dtype=value.dtype, device=value.device)
            instances.set(name, value * scale)
    return instances


def calibrated_scores(calibrator: DetectionScoreCalibrator, instances, kind: str):
    """(scores, class probabilities or None) of ``instances`` after ``calibrator``:
    temperature scales the K+1 class probabilities (``pred_class_probs``: softmax(log p / T),
    = softmax(z / T) of the logits z) or, for dense heads (``kind`` 'sigmoid'), the logit of
    the score; the other methods map the score."""
    probs = instances.get("pred_class_probs") if instances.has("pred_class_probs") else None
    if calibrator.method != "temperature":
        return calibrator.calibrate_scores(instances.scores, instances.pred_classes), probs
    if probs is not None:
        probs = calibrator.scale_probabilities(probs)
        rows = torch.arange(len(instances), device=probs.device)
        return probs[rows, instances.pred_classes].to(instances.scores), probs
    if kind == "sigmoid":
        return calibrator.scale_sigmoid_scores(instances.scores), None
    raise RuntimeError(missing_class_probabilities("temperature scaling of ROI heads"))


class DetectionCalibrationStage(FingerprintVerifiedOnce, nn.Module):
    """The post-processing stage (see the module docstring): an optional fitted score
    ``calibrator`` (with its operating thresholds, applied when ``operating_thresholds``),
    optional fitted ``box_conformal`` intervals and ``class_sets``; ``kind`` is the model's
    :func:`score_kind`. Without any it only rescales the input-frame box fields."""

    def __init__(
        self, kind: str, calibrator=None, box_conformal=None, operating_thresholds=False, class_sets=None
    ):
        super().__init__()
        if kind not in ("softmax", "sigmoid"):
            raise ValueError(f"score kind must be 'softmax' or 'sigmoid', got {kind!r}")
        if operating_thresholds and calibrator is None:
            raise ValueError("operating thresholds need a score calibrator (method 'identity' at least)")
        self.kind, self.operating_thresholds = kind, bool(operating_thresholds)
        self.calibrator, self.box_conformal, self.class_sets = calibrator, box_conformal, class_sets

    @property
    def fitted_parts(self):
        return [p for p in (self.calibrator, self.box_conformal, self.class_sets) if p is not None]

    def seal(self, model):
        """Record the fingerprint of ``model``'s weights and inference mode in the (just
        fitted) calibrator and box intervals."""
        for part in self.fitted_parts:
            part.seal(model_weights(model), inference_signature(model))
        self.forget_verified()

    def verify(self, model):
        """RuntimeError unless every fitted part belongs to exactly ``model``'s weights, mode
        and the configured settings (checked once per load / train-eval switch)."""

        def check():
            weights, signature = model_weights(model), inference_signature(model)
            for part in (self.box_conformal, self.class_sets):
                if part is not None:
                    part.verify(weights, signature)
            if self.calibrator is not None:
                self.calibrator.verify(weights, signature, "MODEL.CALIBRATION.METHOD")
                if self.operating_thresholds and not self.calibrator.has_thresholds:
                    raise RuntimeError(
                        "MODEL.CALIBRATION.OPERATING_THRESHOLDS is True but the loaded calibrator "
                        "holds no thresholds: refit it with tools/fit_detection_calibration.py"
                    )

        if self.fitted_parts:
            self.verify_fingerprint_once(check)

    def calibrate(self, instances):
        """``instances`` (output coordinates) with calibrated scores, kept at the operating
        thresholds and with box intervals, as configured."""
        if len(instances) and not (
            torch.isfinite(instances.scores).all() and torch.isfinite(instances.pred_boxes.tensor).all()
        ):
            raise ValueError("the detector output NaN or inf scores or boxes: nothing to calibrate")
        if self.calibrator is not None:
            scores, probs = calibrated_scores(self.calibrator, instances, self.kind)
            instances.scores = scores
            if probs is not None:
                instances.pred_class_probs = probs
            if self.operating_thresholds:
                instances = instances[self.calibrator.keep(instances.scores, instances.pred_classes)]
        if self.box_conformal is not None:
            self.add_box_intervals(instances)
        if self.class_sets is not None:
            if not instances.has("pred_class_probs"):
                raise RuntimeError(missing_class_probabilities("conformal class sets"))
            instances.pred_class_sets = self.class_sets.sets(instances.pred_class_probs)
        return instances

    def add_box_intervals(self, instances):
        """``pred_boxes_inner`` / ``pred_boxes_outer``: the conformal intervals of the boxes."""
        std = None
        if self.box_conformal.score == "std":
            if not instances.has("pred_box_std"):
                raise RuntimeError(
                    "BOX_CONFORMAL.SCORE 'std' needs pred_box_std: MCDropoutROIHeads with "
                    "MODEL.MC_DROPOUT.OUTPUT_UNCERTAINTY True"
                )
            std = instances.pred_box_std
        boxes = instances.pred_boxes.tensor
        inner, outer = self.box_conformal.intervals(boxes.detach(), instances.pred_classes, std)
        instances.pred_boxes_inner = Boxes(inner.to(boxes))
        instances.pred_boxes_outer = Boxes(outer.to(boxes))

    def forward(self, model, batched_inputs, outputs):
        """The stage on a model's post-processed outputs (a list of dicts; those with
        ``instances``); the network-input size is read from each input's ``image``."""
        self.verify(model)
        for inp, out in zip(batched_inputs, outputs):
            if "instances" in out:
                instances = rescale_input_frame_fields(out["instances"], inp["image"].shape[-2:])
                out["instances"] = self.calibrate(instances)
        return outputs

    def extra_repr(self) -> str:
        return f"kind={self.kind}, operating_thresholds={self.operating_thresholds}"


def _verify_stage(model, args):
    """Forward pre-hook: a stale or missing fitted stage fails before the inference runs."""
    if not model.training:
        getattr(model, STAGE).verify(model)


def _run_stage(model, args, kwargs, outputs):
    """Forward hook: the stage on the outputs of an eval-mode forward (post-processed)."""
    if model.training:
        return None
    batched_inputs = args[0] if args else kwargs["batched_inputs"]
    return getattr(model, STAGE)(model, batched_inputs, outputs)


def attach_calibration_stage(model, stage: DetectionCalibrationStage):
    """Put ``stage`` on ``model`` (replacing any) so that its eval-mode forward returns
    calibrated outputs; returns the model. ``model.inference(..., do_postprocess=False)``
    stays the raw network output."""
    check_supported(model)
    if not hasattr(model, STAGE):
        model.register_forward_pre_hook(_verify_stage)
        model.register_forward_hook(_run_stage, with_kwargs=True)
    device = next(iter(model.parameters())).device
    setattr(model, STAGE, stage.to(device))
    return model


def stage_from_config(cfg, model) -> DetectionCalibrationStage:
    """The stage ``MODEL.CALIBRATION`` describes for ``model``, its state not yet fitted
    (loaded from the checkpoint, or fitted by
    :func:`~conf_plugins.detectron2.score_calibration.fit_calibration_stage`)."""
    settings = validate_calibration_stage_config(cfg)
    kind, k = score_kind(model), num_classes_of(model)
    calibrator = box = sets = None
    if settings.METHOD:
        calibrator = DetectionScoreCalibrator(
            settings.METHOD, k, settings.NUM_BINS, settings.ISOTONIC_BINS, settings.TARGET, settings.CLASSWISE
        )
    bc = settings.BOX_CONFORMAL
    if bc.SCORE:
        box = BoxConformal(k, bc.SCORE, bc.CORRECTION, bc.ALPHA, bc.CLASSWISE)
    if settings.CLASS_SETS.ENABLED:
        sets = ClassConformal(k, settings.CLASS_SETS.ALPHA)
    return DetectionCalibrationStage(kind, calibrator, box, settings.OPERATING_THRESHOLDS, sets)


def with_class_probabilities(cfg):
    """``cfg`` (a copy) whose stock ROI heads are our subclass of the same weights
    (:data:`CLASS_PROBABILITY_HEADS`) when their extra fields are asked for: ``pred_class_probs``
    (``MODEL.ROI_HEADS.OUTPUT_CLASS_PROBS``, or what temperature and class sets need) or
    ``pred_mask_quality`` (``MODEL.ROI_HEADS.OUTPUT_MASK_QUALITY``)."""
    settings = cfg.MODEL.CALIBRATION
    probs = (
        cfg.MODEL.ROI_HEADS.OUTPUT_CLASS_PROBS
        or settings.METHOD == "temperature"
        or settings.CLASS_SETS.ENABLED
    )
    if not (probs or cfg.MODEL.ROI_HEADS.OUTPUT_MASK_QUALITY):
        return cfg
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.ROI_HEADS.OUTPUT_CLASS_PROBS = bool(probs)
    cfg.MODEL.ROI_HEADS.NAME = CLASS_PROBABILITY_HEADS.get(cfg.MODEL.ROI_HEADS.NAME, cfg.MODEL.ROI_HEADS.NAME)
    cfg.freeze()
    return cfg


def build_calibrated_model(cfg):
    """detectron2's ``build_model`` of ``cfg`` with the calibration stage of
    ``MODEL.CALIBRATION`` attached (load the checkpoint afterwards: the stage's fitted state
    is in it). Used by our trainer and tools; call it in a training script of your own."""
    model = build_model(with_class_probabilities(cfg))
    return attach_calibration_stage(model, stage_from_config(cfg, model))
