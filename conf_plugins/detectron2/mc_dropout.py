"""MC-dropout inference for Faster R-CNN: the MC-M comparison row of the DDN paper."""
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads

from .box_head import sample_predictions
from .config import validate_ddn_config


@ROI_HEADS_REGISTRY.register()
class MCDropoutROIHeads(StandardROIHeads):
    """Identical to ``StandardROIHeads`` except for box inference, which samples the dropout
    box head M times and averages the class probabilities (DDN paper eq. 3).

    Backbone, RPN and ROIAlign run once; the M samples are one batched pass over the pooled
    features. Box deltas are averaged too; then stock box inference (score threshold, NMS).
    """

    @configurable
    def __init__(self, *, mc_samples: int, **kwargs):
        super().__init__(**kwargs)
        self.mc_samples = mc_samples

    @classmethod
    def from_config(cls, cfg, input_shape):
        validate_ddn_config(cfg)
        return {**super().from_config(cfg, input_shape),
                "mc_samples": cfg.MODEL.MC_DROPOUT.NUM_SAMPLES}

    def _forward_box(self, features, proposals):
        if self.training:
            return super()._forward_box(features, proposals)
        box_features = self.box_pooler([features[f] for f in self.box_in_features],
                                       [p.proposal_boxes for p in proposals])
        logits, deltas = sample_predictions(self.box_head, self.box_predictor, box_features,
                                            self.mc_samples)
        mean_probs = F.softmax(logits, dim=-1).mean(dim=0)
        # softmax(log p) == p, so the stock inference sees exactly the averaged probabilities.
        predictions = (mean_probs.log(), deltas.mean(dim=0))
        instances, _ = self.box_predictor.inference(predictions, proposals)
        return instances
