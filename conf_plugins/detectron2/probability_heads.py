"""ROI heads whose detections carry their class probabilities and uncertainty.

detectron2's box inference keeps, per detection, only the score of its class; users ask for
the full class-probability vector (detectron2 #533, #1754, #2286, #4388). The stock
inference returns which proposal produced each detection, so every per-proposal quantity
can follow its detection into ``Instances`` without touching the inference itself.
"""

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.structures import Boxes

from conf_plugins.calibration.conformal import BoxConformal
from conf_plugins.calibration.fingerprint import FingerprintVerifiedOnce
from conf_plugins.calibration.score_calibrators import DetectionScoreCalibrator

from .config import validate_box_conformal_config, validate_score_calibration_config

CALIBRATOR = "score_calibrator"  # the calibrator's submodule name (and state_dict prefix)
BOX_CONFORMAL = "box_conformal"  # the box intervals' submodule name (and state_dict prefix)

CLASS_BOX_FIELDS = ("pred_box_std",)  # per proposal and class: (R, K or 1, 4), picked by class


def attach_proposal_fields(instances, kept, fields, proposals, predictions, box_predictor):
    """Copy ``fields`` (name -> per-proposal tensor over all images) to each detection.

    ``kept[i]`` indexes image i's proposals *after* the stock inference dropped those with
    non-finite boxes or scores (fast_rcnn_inference_single_image); the same mask is rebuilt
    here from the predictor's public ``predict_boxes`` / ``predict_probs``.
    """
    if not fields:
        return instances
    sizes = [len(p) for p in proposals]
    boxes = box_predictor.predict_boxes(predictions, proposals)
    scores = box_predictor.predict_probs(predictions, proposals)
    split = {name: value.split(sizes) for name, value in fields.items()}
    for i, (inst, kept_i) in enumerate(zip(instances, kept)):
        valid = torch.isfinite(boxes[i]).all(dim=1) & torch.isfinite(scores[i]).all(dim=1)
        rows = valid.nonzero()[:, 0][kept_i]
        for name, values in split.items():
            picked = values[i][rows]
            if name in CLASS_BOX_FIELDS:  # (D, K or 1, 4): the detection's own class
                cls = inst.pred_classes if picked.shape[1] > 1 else torch.zeros_like(inst.pred_classes)
                picked = picked[torch.arange(len(rows), device=picked.device), cls]
            inst.set(name, picked)
    return instances


@ROI_HEADS_REGISTRY.register()
class ProbabilityROIHeads(FingerprintVerifiedOnce, StandardROIHeads):
    """``StandardROIHeads`` whose detections carry ``pred_class_probs``: the K+1 softmax of
    the proposal that produced each detection (its ``scores`` entry is one of them), when
    ``MODEL.ROI_HEADS.OUTPUT_CLASS_PROBS`` is True; and whose inference applies a fitted
    score calibrator when ``MODEL.ROI_HEADS.SCORE_CALIBRATION.METHOD`` names one (see
    :mod:`conf_plugins.calibration.score_calibrators`): temperature divides the class logits
    before the stock score threshold and NMS (``pred_class_probs`` are then the scaled
    softmax); platt / linear / histogram / isotonic map each detection's score after them
    (``pred_class_probs`` stay the model's); with ``OPERATING_THRESHOLDS`` only detections
    whose calibrated score is above their class's operating threshold are kept. Boxes are
    never changed. The calibrator lives in the checkpoint (from
    ``tools/fit_detection_calibration.py``) with a fingerprint of these heads' weights and
    inference mode; a missing, stale or mismatched one is an error at the first inference
    (verified once per load / train-eval switch: :class:`FingerprintVerifiedOnce`).
    Training is the stock one; this is the base of our MC-dropout and DDN heads."""

    @configurable
    def __init__(
        self,
        *,
        output_class_probs: bool = False,
        score_calibration: str = "",
        calibration_bins: int = 10,
        isotonic_bins: int = 1000,
        calibration_target: str = "hit",
        calibration_classwise: bool = True,
        operating_thresholds: bool = False,
        box_conformal: dict = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.output_class_probs = output_class_probs
        self.operating_thresholds = operating_thresholds
        self.score_calibrator = None
        self.box_conformal = None
        if box_conformal:
            self.attach_box_conformal(BoxConformal(self.num_classes, **box_conformal))
        if score_calibration:
            self.attach_score_calibrator(
                DetectionScoreCalibrator(
                    score_calibration,
                    self.num_classes,
                    calibration_bins,
                    isotonic_bins,
                    calibration_target,
                    calibration_classwise,
                )
            )

    @classmethod
    def from_config(cls, cfg, input_shape):
        sc = validate_score_calibration_config(cfg)
        bc = validate_box_conformal_config(cfg)
        box_conformal = (
            dict(score=bc.SCORE, correction=bc.CORRECTION, alpha=bc.ALPHA, classwise=bc.CLASSWISE)
            if bc.SCORE
            else None
        )
        return {
            "box_conformal": box_conformal,
            **super().from_config(cfg, input_shape),
            "output_class_probs": cfg.MODEL.ROI_HEADS.OUTPUT_CLASS_PROBS,
            "score_calibration": sc.METHOD,
            "calibration_bins": sc.NUM_BINS,
            "isotonic_bins": sc.ISOTONIC_BINS,
            "calibration_target": sc.TARGET,
            "calibration_classwise": sc.CLASSWISE,
            "operating_thresholds": sc.OPERATING_THRESHOLDS,
        }

    def attach_score_calibrator(self, calibrator: DetectionScoreCalibrator):
        """Use ``calibrator`` at inference (replacing any); seal it if it was just fitted."""
        if calibrator.num_classes != self.num_classes:
            raise ValueError(
                f"calibrator for {calibrator.num_classes} classes, heads have {self.num_classes}"
            )
        setattr(self, CALIBRATOR, calibrator)  # nn.Module moves it from None to a submodule
        self.forget_verified()

    def attach_box_conformal(self, intervals: BoxConformal):
        """Add conformal box intervals at inference (replacing any)."""
        if intervals.num_classes != self.num_classes:
            raise ValueError(
                f"box intervals for {intervals.num_classes} classes, heads have {self.num_classes}"
            )
        setattr(self, BOX_CONFORMAL, intervals)
        self.forget_verified()

    def seal_box_conformal(self):
        """Record the fingerprint of the current weights in the (just fitted) box intervals."""
        self.box_conformal.seal(self.calibrated_weights(), self.inference_signature())
        self.forget_verified()

    def seal_score_calibrator(self):
        """Record the fingerprint of the current weights in the (just fitted) calibrator."""
        self.score_calibrator.seal(self.calibrated_weights(), self.inference_signature())
        self.forget_verified()

    def calibrated_weights(self):
        """(name, tensor) of the weights and buffers a score calibrator belongs to: all of
        these heads' except the calibrator's own (the box head and predictor decide the
        scores; the features they see come with them through the checkpoint); the fitted
        calibrator and box intervals themselves left out."""
        fitted = (CALIBRATOR + ".", BOX_CONFORMAL + ".")
        return [(n, t) for n, t in self.state_dict().items() if not n.startswith(fitted)]

    def inference_signature(self) -> str:
        """What, beside the weights, a calibrated score depends on (the inference mode)."""
        return type(self).__name__

    def verified_calibrator(self):
        """The score calibrator (None without one), checked against the weights once per
        load / train-eval switch."""
        if self.score_calibrator is not None or self.box_conformal is not None:
            self.verify_fingerprint_once(self._verify_fitted)
        return self.score_calibrator

    def _verify_fitted(self):
        if self.box_conformal is not None:
            self.box_conformal.verify(self.calibrated_weights(), self.inference_signature())
        if self.score_calibrator is None:
            return
        self.score_calibrator.verify(
            self.calibrated_weights(), self.inference_signature(), "MODEL.ROI_HEADS.SCORE_CALIBRATION.METHOD"
        )
        if self.operating_thresholds and not self.score_calibrator.has_thresholds:
            raise RuntimeError(
                "MODEL.ROI_HEADS.SCORE_CALIBRATION.OPERATING_THRESHOLDS is True but the loaded "
                "calibrator holds no thresholds: refit it with tools/fit_detection_calibration.py"
            )

    def box_predictions(self, box_features, proposals):
        """(predictions for ``box_predictor.inference``, per-proposal fields) of pooled features."""
        predictions = self.box_predictor(self.box_head(box_features))
        fields = {}
        if self.output_class_probs:
            fields["pred_class_probs"] = F.softmax(predictions[0], dim=-1)
        return predictions, fields

    def _forward_box(self, features, proposals):
        if self.training:
            return super()._forward_box(features, proposals)
        # the stock inference branch, with the kept proposal indices used instead of dropped
        box_features = self.box_pooler(
            [features[f] for f in self.box_in_features], [p.proposal_boxes for p in proposals]
        )
        calibrator = self.verified_calibrator()  # before any work: a stale one fails fast
        predictions, fields = self.box_predictions(box_features, proposals)
        if calibrator is not None and calibrator.method == "temperature":
            predictions = (calibrator.scale_logits(predictions[0]), *predictions[1:])
            if "pred_class_probs" in fields:
                fields["pred_class_probs"] = F.softmax(predictions[0], dim=-1)
        instances, kept = self.box_predictor.inference(predictions, proposals)
        instances = attach_proposal_fields(
            instances, kept, fields, proposals, predictions, self.box_predictor
        )
        if calibrator is not None and calibrator.method != "temperature":
            for inst in instances:
                inst.scores = calibrator.calibrate_scores(inst.scores, inst.pred_classes)
        if calibrator is not None and self.operating_thresholds:
            instances = [inst[calibrator.keep(inst.scores, inst.pred_classes)] for inst in instances]
        if self.box_conformal is not None:
            for inst in instances:
                self.add_box_intervals(inst)
        return instances

    def add_box_intervals(self, inst):
        """``pred_boxes_inner`` / ``pred_boxes_outer``: the conformal interval boxes."""
        std = inst.pred_box_std if self.box_conformal.score == "std" and inst.has("pred_box_std") else None
        if self.box_conformal.score == "std" and std is None:
            raise RuntimeError(
                "BOX_CONFORMAL.SCORE 'std' needs pred_box_std: MCDropoutROIHeads with "
                "MODEL.MC_DROPOUT.OUTPUT_UNCERTAINTY True"
            )
        boxes = inst.pred_boxes.tensor
        inner, outer = self.box_conformal.intervals(boxes.detach(), inst.pred_classes, std)
        inst.pred_boxes_inner = Boxes(inner.to(boxes))
        inst.pred_boxes_outer = Boxes(outer.to(boxes))
