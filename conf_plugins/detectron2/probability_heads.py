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

CLASS_BOX_FIELDS = ("pred_box_std",)  # per proposal and class: (R, K or 1, 4), picked by class


def mask_quality(mask_probs: torch.Tensor) -> torch.Tensor:
    """(D,) mean mask probability inside each binarised mask (probability > 0.5, the threshold
    of ``detector_postprocess``) of (D, 1, M, M) mask probabilities; 0 for an empty mask. The
    score x this is the mask confidence of Mask Scoring R-CNN (Huang et al., CVPR 2019) and
    Mask2Former (Cheng et al., CVPR 2022)."""
    probs = mask_probs.flatten(1)
    inside = probs > 0.5
    return (probs * inside).sum(1) / inside.sum(1).clamp_min(1)


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
class ProbabilityROIHeads(StandardROIHeads):
    """``StandardROIHeads`` whose detections carry ``pred_class_probs``: the K+1 softmax of
    the proposal that produced each detection (its ``scores`` entry is one of them), when
    ``MODEL.ROI_HEADS.OUTPUT_CLASS_PROBS`` is True; with a mask head and
    ``MODEL.ROI_HEADS.OUTPUT_MASK_QUALITY``, ``pred_mask_quality`` (:func:`mask_quality`).
    Training and inference are otherwise the
    stock ones; this is the base of our MC-dropout and DDN heads, which add per-proposal
    fields through :meth:`box_predictions`. Calibration is not here: it is the
    post-processing stage of the whole model
    (:mod:`conf_plugins.detectron2.calibration_stage`), in output coordinates."""

    @configurable
    def __init__(self, *, output_class_probs: bool = False, output_mask_quality: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.output_class_probs = output_class_probs
        self.output_mask_quality = output_mask_quality

    @classmethod
    def from_config(cls, cfg, input_shape):
        return {
            **super().from_config(cfg, input_shape),
            "output_class_probs": cfg.MODEL.ROI_HEADS.OUTPUT_CLASS_PROBS,
            "output_mask_quality": cfg.MODEL.ROI_HEADS.OUTPUT_MASK_QUALITY,
        }

    def forward_with_given_boxes(self, features, instances):
        """The stock mask (and keypoint) inference, plus ``pred_mask_quality`` on request."""
        instances = super().forward_with_given_boxes(features, instances)
        if self.output_mask_quality and self.mask_on:
            for inst in instances:  # pred_masks: (D, 1, M, M) probabilities before pasting
                inst.pred_mask_quality = mask_quality(inst.pred_masks)
        return instances

    def inference_signature(self) -> str:
        """What, beside the weights, the detections depend on: the stock single pass."""
        return "StandardROIHeads"

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
        predictions, fields = self.box_predictions(box_features, proposals)
        instances, kept = self.box_predictor.inference(predictions, proposals)
        return attach_proposal_fields(instances, kept, fields, proposals, predictions, self.box_predictor)
