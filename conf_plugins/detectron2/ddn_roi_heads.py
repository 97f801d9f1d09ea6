"""The Distilled Dropout Network student's ROI heads (DDN paper §III.C, §V)."""
import torch
from detectron2.config import configurable
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.structures import Boxes, pairwise_iou

from conf_plugins.losses import logit_distillation_loss

from .config import validate_ddn_config
from .teacher import DropoutTeacher


@ROI_HEADS_REGISTRY.register()
class DDNROIHeads(StandardROIHeads):
    """Identical to ``StandardROIHeads`` except for the box loss in training, which distils a
    frozen MC-dropout teacher (DDN paper eq. 7–10):

        loss_distill = DISTILL_WEIGHT · mean_r ‖f(x_r) − z_r‖²,   z_r = mean of M teacher logits
        loss_cls     = GT_WEIGHT · CE(f(x), y)         loss_box_reg = stock

    The teacher's M dropout samples run on the *same pooled features* as the student, in one
    batched pass. Foreground proposals of a GT box that no teacher MC-sample detection of its
    class overlaps with IoU >= MATCH_IOU get the uniform target z = 0 (all logits equal, so
    softmax = 1/(K+1); the zero vector is the smallest-norm such logit vector). Inference is
    the stock single pass. The teacher is held outside the module tree: it is not in
    ``state_dict()``, not seen by the optimizer and not wrapped by DDP.
    """

    @configurable
    def __init__(self, *, teacher: DropoutTeacher, num_samples: int, match_iou: float,
                 distill_weight: float, gt_weight: float, **kwargs):
        super().__init__(**kwargs)
        if self.train_on_pred_boxes:
            raise ValueError("DDNROIHeads does not support MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES")
        self._teacher = (teacher,)  # a tuple hides it from nn.Module registration
        self.num_samples = num_samples
        self.match_iou = match_iou
        self.distill_weight = distill_weight
        self.gt_weight = gt_weight

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ddn = cfg.MODEL.DDN
        dropout = validate_ddn_config(cfg)
        ret["teacher"] = DropoutTeacher.from_checkpoint(
            ddn.TEACHER_WEIGHTS, ret["box_head"], ret["box_predictor"], dropout)
        ret.update(num_samples=ddn.NUM_SAMPLES, match_iou=ddn.MATCH_IOU,
                   distill_weight=ddn.DISTILL_WEIGHT, gt_weight=ddn.GT_WEIGHT)
        return ret

    @property
    def teacher(self) -> DropoutTeacher:
        return self._teacher[0]

    def _forward_box(self, features, proposals):
        if not self.training:
            return super()._forward_box(features, proposals)
        # Same as the stock training branch, plus the teacher on the same pooled features.
        box_features = self.box_pooler([features[f] for f in self.box_in_features],
                                       [p.proposal_boxes for p in proposals])
        predictions = self.box_predictor(self.box_head(box_features))
        targets = self.distillation_targets(box_features, proposals)
        losses = self.box_predictor.losses(predictions, proposals)
        losses["loss_cls"] = self.gt_weight * losses["loss_cls"]
        losses["loss_distill"] = self.distill_weight * logit_distillation_loss(
            predictions[0], targets)
        return losses

    @torch.no_grad()
    def distillation_targets(self, box_features, proposals):
        """Mean teacher logits per proposal (eq. 10); uniform rows for undetected GT."""
        self.teacher.to(box_features.device)
        logits, deltas = self.teacher.sample(box_features, self.num_samples)
        targets = logits.mean(dim=0)
        targets[self.undetected_gt_proposals(logits, deltas, proposals)] = 0.0
        return targets

    def undetected_gt_proposals(self, logits, deltas, proposals):
        """Bool mask over all proposals: foreground, and its GT box has no teacher detection.

        A teacher detection is a (sample, proposal, class) whose probability is at least the
        test score threshold, with the box regressed for that class (stock inference before
        NMS; NMS only drops lower-scored duplicates). Detections come from the proposals of the
        same image, so with PROPOSAL_APPEND_GT off they are the teacher's own RPN proposals.
        """
        probs = logits.softmax(dim=-1)
        num_classes = probs.shape[-1] - 1
        masks, start = [], 0
        for image_proposals in proposals:
            n = len(image_proposals)
            masks.append(self._undetected_in_image(
                probs[:, start:start + n], deltas[:, start:start + n], image_proposals,
                num_classes))
            start += n
        return torch.cat(masks)

    def _undetected_in_image(self, probs, deltas, image_proposals, num_classes):
        gt_classes = image_proposals.gt_classes
        undetected = torch.zeros_like(gt_classes, dtype=torch.bool)
        foreground = (gt_classes >= 0) & (gt_classes < num_classes)
        if not foreground.any():
            return undetected
        proposal_boxes = image_proposals.proposal_boxes.tensor
        gt_boxes = image_proposals.gt_boxes.tensor
        num_samples = probs.shape[0]
        transform = self.box_predictor.box2box_transform
        unique_gt = torch.unique(
            torch.cat([gt_boxes[foreground], gt_classes[foreground, None].to(gt_boxes)], 1), dim=0)
        for row in unique_gt:
            gt_box, c = row[:4], int(row[4])
            class_deltas = deltas[..., 4 * c:4 * c + 4] if deltas.shape[-1] > 4 else deltas
            boxes = transform.apply_deltas(class_deltas.reshape(-1, 4),
                                           proposal_boxes.repeat(num_samples, 1))
            kept = probs[..., c].reshape(-1) >= self.box_predictor.test_score_thresh
            iou = pairwise_iou(Boxes(gt_box[None]), Boxes(boxes[kept]))
            if not (iou >= self.match_iou).any():
                same_gt = (gt_boxes == gt_box).all(dim=1) & (gt_classes == c)
                undetected |= same_gt
        return undetected
