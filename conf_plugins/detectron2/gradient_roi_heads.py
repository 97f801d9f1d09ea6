"""Per-detection gradient uncertainty metrics for Faster R-CNN (gradient paper §2, SPEC §4)."""

import torch
from detectron2.config import configurable
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from torch import nn

from conf_plugins.calibration.entropy import entropy_from_logits
from conf_plugins.calibration.gradient_metrics import last_layer_gradient_metrics

# Instances field of each metric of conf_plugins.calibration.gradient_metrics.METRICS
GRADIENT_FIELDS = {
    "l1_norm": "grad_l1",
    "l2_norm": "grad_l2",
    "min": "grad_min",
    "max": "grad_max",
    "mean": "grad_mean",
    "std": "grad_std",
    "skewness": "grad_skewness",
    "kurtosis": "grad_kurtosis",
}


@ROI_HEADS_REGISTRY.register()
class GradientMetricsROIHeads(StandardROIHeads):
    """Identical to ``StandardROIHeads`` (training included), except that every detection
    at inference also carries gradient uncertainty metrics and the entropy of its proposal.

    Layer: the box predictor's classifier ``cls_score``, ``z = W h + b`` with ``h`` the
    box-head output of the proposal and ``z`` its K + 1 class logits (background last). The
    metrics (gradient paper §2) are those of ``∇_{W,b} −log p_ŷ`` with
    ``ŷ = argmax_{k ≤ K+1} p_k`` over *all* K + 1 classes of the proposal, as the paper
    defines the predicted class (eq. 3–5). detectron2 turns one proposal into up to K
    detections, one per foreground class whose score passes ``SCORE_THRESH_TEST``, so a
    detection's ``pred_classes`` may differ from ŷ (ŷ may even be background); all
    detections of a proposal share its metrics, as they share its softmax.

    Cost: the gradient of a linear layer is ``(p − e_ŷ) ⊗ [h, 1]``, so every statistic has a
    closed form in O(K + D) per detection (``last_layer_gradient_metrics``): no backward
    pass, no autograd graph, one stock forward; only the kept detections are evaluated.

    Fields added to each output ``Instances`` (float, one value per detection):
    ``grad_l1``, ``grad_l2``, ``grad_min``, ``grad_max``, ``grad_mean``, ``grad_std``,
    ``grad_skewness``, ``grad_kurtosis`` (see ``GRADIENT_FIELDS``) and ``entropy``, the
    normalised entropy of the proposal's K + 1 softmax (paper eq. 1). Fed to a meta
    classifier (``conf_plugins.calibration.meta_classifier``) they predict whether a
    detection is correct (paper §3–5).
    """

    @configurable
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(getattr(self.box_predictor, "cls_score", None), nn.Linear):
            raise TypeError(
                "GradientMetricsROIHeads needs a box predictor whose classifier "
                "`cls_score` is an nn.Linear (FastRCNNOutputLayers), got "
                f"{type(self.box_predictor).__name__}"
            )

    def _forward_box(self, features, proposals):
        if self.training:
            return super()._forward_box(features, proposals)
        box_features = self.box_pooler(
            [features[f] for f in self.box_in_features], [p.proposal_boxes for p in proposals]
        )
        hidden = self.box_head(box_features).flatten(1)  # the input of cls_score
        predictions = self.box_predictor(hidden)
        instances, kept = self.box_predictor.inference(predictions, proposals)
        rows = self._detection_rows(predictions, proposals, kept)
        logits = predictions[0][rows]
        fields = {GRADIENT_FIELDS[m]: v for m, v in last_layer_gradient_metrics(hidden[rows], logits).items()}
        fields["entropy"] = entropy_from_logits(logits, dim=1)
        sizes = [len(x) for x in instances]
        for name, values in fields.items():
            for inst, part in zip(instances, values.split(sizes)):
                inst.set(name, part)
        return instances

    def _detection_rows(self, predictions, proposals, kept) -> torch.Tensor:
        """Row of every detection in the batched predictions, in the order of ``instances``.

        ``fast_rcnn_inference_single_image`` first drops proposals with non-finite boxes or
        scores, so its kept indices count the remaining rows; map them back.
        """
        boxes = self.box_predictor.predict_boxes(predictions, proposals)
        probs = self.box_predictor.predict_probs(predictions, proposals)
        rows, start = [], 0
        for b, p, k in zip(boxes, probs, kept):
            valid = (torch.isfinite(b).all(dim=1) & torch.isfinite(p).all(dim=1)).nonzero()
            rows.append(start + valid[:, 0][k])
            start += len(b)
        return torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long)
