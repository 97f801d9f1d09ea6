"""The Distilled Dropout Network student's ROI heads (DDN paper §III.C, §V)."""

import torch
from detectron2.config import configurable
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY
from detectron2.structures import Boxes, pairwise_iou
from detectron2.utils.events import get_event_storage

from conf_plugins.losses import logit_distillation_loss

from .config import validate_ddn_config
from .probability_heads import ProbabilityROIHeads
from .teacher import DropoutTeacher


@ROI_HEADS_REGISTRY.register()
class DDNROIHeads(ProbabilityROIHeads):
    """Identical to ``StandardROIHeads`` except for the box loss in training, which distils a
    frozen MC-dropout teacher (DDN paper eq. 7–10):

        loss_distill = DISTILL_WEIGHT · mean_r ‖f(x_r) − z_r‖²,   z_r = mean of M teacher logits
        loss_cls     = GT_WEIGHT · CE(f(x), y)         loss_box_reg = stock

    The teacher's M dropout samples run on the *same pooled features* as the student, in one
    batched pass. Foreground proposals of a GT box that no detection of the teacher's MC
    inference over all of the image's RPN proposals finds (its class, IoU >= MATCH_IOU; the
    paper's "detections associated to them from the sampling procedure", so independent of
    the minibatch sampling) get the uniform target z = 0 (all logits equal, so softmax =
    1/(K+1); the zero vector is the smallest-norm such logit vector); their number is logged
    as ``ddn/uniform_target_proposals``. Inference is the stock single pass
    (``pred_class_probs`` on request, as ``ProbabilityROIHeads``). The teacher is loaded when
    training first needs it (evaluation needs no teacher file) and held outside the module
    tree: it is not in ``state_dict()``, not seen by the optimizer and not wrapped by DDP.
    """

    @configurable
    def __init__(
        self,
        *,
        teacher_weights: str,
        teacher_dropout: float,
        num_samples: int,
        match_iou: float,
        distill_weight: float,
        gt_weight: float,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if self.train_on_pred_boxes:
            raise ValueError("DDNROIHeads does not support MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES")
        self.teacher_weights, self.teacher_dropout = teacher_weights, teacher_dropout
        self._teacher = ()  # a tuple hides it from nn.Module registration; built on first use
        self.num_samples = num_samples
        self.match_iou = match_iou
        self.distill_weight = distill_weight
        self.gt_weight = gt_weight
        self._undetected_gt = None

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ddn = cfg.MODEL.DDN
        ret.update(
            teacher_weights=ddn.TEACHER_WEIGHTS,
            teacher_dropout=validate_ddn_config(cfg),
            num_samples=ddn.NUM_SAMPLES,
            match_iou=ddn.MATCH_IOU,
            distill_weight=ddn.DISTILL_WEIGHT,
            gt_weight=ddn.GT_WEIGHT,
        )
        return ret

    @property
    def teacher(self) -> DropoutTeacher:
        """The frozen teacher, loaded from ``MODEL.DDN.TEACHER_WEIGHTS`` when training first
        needs it: a trained student is evaluated and deployed without the teacher's file."""
        if not self._teacher:
            self._teacher = (
                DropoutTeacher.from_checkpoint(
                    self.teacher_weights, self.box_head, self.box_predictor, self.teacher_dropout
                ),
            )
        return self._teacher[0]

    def forward(self, images, features, proposals, targets=None):
        if self.training:  # before the stock minibatch sampling sees the proposals
            self._undetected_gt = self.undetected_gt(features, proposals, targets)
        return super().forward(images, features, proposals, targets)

    def _forward_box(self, features, proposals):
        if not self.training:
            return super()._forward_box(features, proposals)
        # Same as the stock training branch, plus the teacher on the same pooled features.
        box_features = self.box_pooler(
            [features[f] for f in self.box_in_features], [p.proposal_boxes for p in proposals]
        )
        predictions = self.box_predictor(self.box_head(box_features))
        targets = self.distillation_targets(box_features, proposals, self._undetected_gt)
        losses = self.box_predictor.losses(predictions, proposals)
        losses["loss_cls"] = self.gt_weight * losses["loss_cls"]
        losses["loss_distill"] = self.distill_weight * logit_distillation_loss(predictions[0], targets)
        return losses

    @torch.no_grad()
    def distillation_targets(self, box_features, proposals, undetected_gt=None):
        """Mean teacher logits per sampled proposal (eq. 10); uniform rows (0) for the
        foreground proposals of GT boxes in ``undetected_gt`` (per image, (G, 5) rows of
        box + class, from :meth:`undetected_gt`; None: decided on these proposals alone)."""
        self.teacher.to(box_features.device)
        logits, deltas = self.teacher.sample(box_features, self.num_samples)
        targets = logits.mean(dim=0)
        if undetected_gt is None:  # decided on the sampled proposals' own GT
            undetected_gt = self._undetected_rows(
                logits, deltas, proposals, [(p.gt_boxes.tensor, p.gt_classes) for p in proposals]
            )
        uniform = torch.cat([self._proposals_of(p, rows) for p, rows in zip(proposals, undetected_gt)])
        targets[uniform] = 0.0
        try:
            storage = get_event_storage()
            storage.put_scalar("ddn/uniform_target_proposals", int(uniform.sum()))
            storage.put_scalar("ddn/uniform_target_fraction", float(uniform.float().mean()))
        except AssertionError:  # outside a detectron2 EventStorage (direct calls, tests)
            pass
        return targets

    @torch.no_grad()
    def undetected_gt(self, features, proposals, targets):
        """Per image, the GT boxes (rows of box + class) that no detection of the teacher's
        MC inference over *all* of the image's RPN proposals finds: a (sample, proposal,
        class c) with probability >= the test score threshold whose box regressed for c
        overlaps the GT box of class c with IoU >= MATCH_IOU (stock inference before NMS,
        which only drops lower-scored duplicates). Independent of the minibatch sampling."""
        self.teacher.to(features[self.box_in_features[0]].device)
        pooled = self.box_pooler(
            [features[f] for f in self.box_in_features], [p.proposal_boxes for p in proposals]
        )
        logits, deltas = self.teacher.sample(pooled, self.num_samples)
        return self._undetected_rows(
            logits, deltas, proposals, [(t.gt_boxes.tensor, t.gt_classes) for t in targets]
        )

    def _undetected_rows(self, logits, deltas, proposals, ground_truth):
        """Per image, :meth:`_undetected_in_image` of its slice of the M samples over all
        images' ``proposals``; ``ground_truth``: per image (gt boxes, gt classes)."""
        probs = logits.softmax(dim=-1)
        rows, start = [], 0
        for p, (gt_boxes, gt_classes) in zip(proposals, ground_truth):
            n = len(p)
            rows.append(
                self._undetected_in_image(
                    probs[:, start : start + n],
                    deltas[:, start : start + n],
                    p.proposal_boxes.tensor,
                    gt_boxes,
                    gt_classes,
                )
            )
            start += n
        return rows

    def _undetected_in_image(self, probs, deltas, proposal_boxes, gt_boxes, gt_classes):
        """(G', 5) rows (box, class) of the GT boxes the teacher's samples do not detect."""
        num_classes = probs.shape[-1] - 1
        keep = (gt_classes >= 0) & (gt_classes < num_classes)
        unique_gt = torch.unique(torch.cat([gt_boxes[keep], gt_classes[keep, None].to(gt_boxes)], 1), dim=0)
        num_samples = probs.shape[0]
        transform = self.box_predictor.box2box_transform
        missed = []
        for row in unique_gt:
            gt_box, c = row[:4], int(row[4])
            class_deltas = deltas[..., 4 * c : 4 * c + 4] if deltas.shape[-1] > 4 else deltas
            boxes = transform.apply_deltas(class_deltas.reshape(-1, 4), proposal_boxes.repeat(num_samples, 1))
            kept = probs[..., c].reshape(-1) >= self.box_predictor.test_score_thresh
            iou = pairwise_iou(Boxes(gt_box[None]), Boxes(boxes[kept]))
            if not (iou >= self.match_iou).any():
                missed.append(row)
        return torch.stack(missed) if missed else unique_gt[:0]

    @staticmethod
    def _proposals_of(image_proposals, undetected_rows):
        """Bool mask of the proposals whose foreground GT (box + class) is one of ``rows``."""
        mask = torch.zeros(len(image_proposals), dtype=torch.bool, device=image_proposals.gt_classes.device)
        for row in undetected_rows:
            mask |= (image_proposals.gt_boxes.tensor == row[:4]).all(dim=1) & (
                image_proposals.gt_classes == int(row[4])
            )
        return mask
