"""MC-dropout inference for Faster R-CNN: the MC-M comparison row of the DDN paper."""

import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY

from conf_plugins.calibration.entropy import entropy, mutual_information

from .box_head import sample_predictions
from .config import validate_ddn_config
from .probability_heads import ProbabilityROIHeads


@ROI_HEADS_REGISTRY.register()
class MCDropoutROIHeads(ProbabilityROIHeads):
    """Identical to ``StandardROIHeads`` except for box inference, which samples the dropout
    box head M times and averages the class probabilities (DDN paper eq. 3).

    Backbone, RPN and ROIAlign run once; the M samples are one batched pass over the pooled
    features. Box deltas are averaged too; then stock box inference (score threshold, NMS).
    With ``MODEL.MC_DROPOUT.OUTPUT_UNCERTAINTY`` each detection also carries, from the M
    samples of its proposal: ``pred_entropy`` (predictive entropy H[p̄], p̄ the mean softmax),
    ``pred_mutual_info`` (H[p̄] − mean_m H[p_m], the epistemic part; Gal's BALD) and
    ``pred_box_std`` (XYXY std over the M decoded boxes of its class, population std).
    """

    @configurable
    def __init__(self, *, mc_samples: int, output_uncertainty: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.mc_samples = mc_samples
        self.output_uncertainty = output_uncertainty

    @classmethod
    def from_config(cls, cfg, input_shape):
        validate_ddn_config(cfg)
        return {
            **super().from_config(cfg, input_shape),
            "mc_samples": cfg.MODEL.MC_DROPOUT.NUM_SAMPLES,
            "output_uncertainty": cfg.MODEL.MC_DROPOUT.OUTPUT_UNCERTAINTY,
        }

    def inference_signature(self) -> str:
        dropout = getattr(self.box_head, "dropout", None)  # rescales the samples: part of the mode
        return f"MCDropoutROIHeads;samples={self.mc_samples};dropout={dropout}"

    def box_predictions(self, box_features, proposals):
        logits, deltas = sample_predictions(self.box_head, self.box_predictor, box_features, self.mc_samples)
        probs = F.softmax(logits, dim=-1)  # (M, R, K+1)
        mean_probs = probs.mean(dim=0)
        # softmax(log p) == p, so the stock inference sees exactly the averaged probabilities.
        predictions = (mean_probs.log(), deltas.mean(dim=0))
        fields = {}
        if self.output_class_probs:
            fields["pred_class_probs"] = mean_probs
        if self.output_uncertainty:
            fields["pred_entropy"] = entropy(mean_probs, dim=-1)
            fields["pred_mutual_info"] = mutual_information(probs, sample_dim=0, class_dim=-1)
            m, r = deltas.shape[:2]
            anchors = cat([p.proposal_boxes.tensor for p in proposals]).repeat(m, 1)
            boxes = self.box_predictor.box2box_transform.apply_deltas(deltas.reshape(m * r, -1), anchors)
            fields["pred_box_std"] = boxes.reshape(m, r, -1, 4).std(dim=0, correction=0)
        return predictions, fields
