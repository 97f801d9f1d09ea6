"""Decode heads with a success-prediction branch (success-prediction paper §3.1–3.2).

One mechanism, :class:`SuccessBranchMixin`, mixed into three stock mmseg heads. Every stock
head ends in ``cls_seg(features)``; the mixin runs the success branch (a hidden 1×1 conv +
a 2-class 1×1 conv: failure / success) on those same features, so for DeepLabV3+ it sees
the output of the low-level-feature decoder. Training adds a cross-entropy loss against the
per-pixel success target; prediction can append the success logit to the seg logits so
that mmseg's whole / slide inference, flips and resizes carry it (``SuccessEncoderDecoder``).

Optionally (``depth_branch=True``) a third task, per-pixel depth regression with a masked L1
loss, from the same features: the three-task case of Kendall et al. (seg, success, depth).
Packed layout of ``cls_seg``: C seg logits, 2 success logits, then 1 depth channel if the
depth branch is on; ``predict_by_feat`` drops the depth channel, so inference is unchanged.
"""

import copy

import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmseg.models.decode_heads import ASPPHead, DepthwiseSeparableASPPHead, FCNHead
from mmseg.models.losses import accuracy
from mmseg.models.utils import resize
from mmseg.registry import MODELS
from torch import nn


def success_target(seg_logits, seg_label, ignore_index: int, align_corners: bool):
    """Per-pixel success label: 1 where arg-max of the seg logits (resized to the label's
    resolution) equals the label, 0 where not, ``ignore_index`` where the label is ignored.
    Carries no gradient (success paper §3.1)."""
    with torch.no_grad():
        pred = resize(
            seg_logits, size=seg_label.shape[-2:], mode="bilinear", align_corners=align_corners
        ).argmax(dim=1)
        label = seg_label.squeeze(1) if seg_label.dim() == 4 else seg_label
        target = (pred == label).long()
        target[label == ignore_index] = ignore_index
    return target


def masked_l1_depth_loss(depth_pred, gt_depth, align_corners: bool, valid=None):
    """Mean absolute error over valid pixels: ``Σ_{p∈V} |d̂_p − d_p| / |V|``, the prediction
    (N, 1, h, w) resized bilinearly to the ground truth's (N, 1, H, W) resolution; V = pixels
    with a finite depth > 0 (and ``valid``, if given). No valid pixel is a ValueError."""
    depth_pred = resize(depth_pred, size=gt_depth.shape[-2:], mode="bilinear", align_corners=align_corners)
    mask = torch.isfinite(gt_depth) & (gt_depth > 0)
    if valid is not None:
        mask &= valid
    if not mask.any():
        raise ValueError(
            "no valid depth pixel in this batch (every gt_depth_map pixel is <= 0, "
            "not finite or padding): no depth target"
        )
    return (depth_pred[mask] - gt_depth[mask]).abs().mean()


SUCCESS_INPUTS = ("features", "seg_confidence")


def seg_confidence_channels(seg_logits):
    """Two per-pixel channels of the (detached) seg logits: the max softmax and the margin
    between the two largest logits. An optional input of the success branch: the evidence
    the free max-softmax baseline uses, so the branch can refine it rather than relearn it."""
    logits = seg_logits.detach()
    top2 = logits.topk(2, dim=1).values
    max_softmax = logits.softmax(dim=1).amax(dim=1, keepdim=True)
    return torch.cat([max_softmax, top2[:, :1] - top2[:, 1:]], dim=1)


def balanced_class_weight(target, ignore_index: int):
    """Cross-entropy class weights (failure, success) = N / (2 N_c) over the batch's labelled
    pixels, so both classes weigh half of the loss (a class absent from the batch gets 0)."""
    labelled = target[target != ignore_index]
    counts = torch.stack([(labelled == 0).sum(), (labelled == 1).sum()]).float()
    return torch.where(counts > 0, labelled.numel() / (2 * counts.clamp(min=1)), torch.zeros_like(counts))


class SuccessBranchMixin:
    """Adds a success branch to a stock decode head; see the module docstring.

    Args (beyond the stock head's):
        success_channels (int): channels of the hidden layer. Default 32 (keeps the branch
            and its snapshot under 0.1 % of a ResNet-50 FCN's parameters).
        success_loss_weight (float): weight of the success cross-entropy. Default 1.0.
        success_class_weight (str | None): None: plain cross-entropy (the paper); 'balanced':
            failure and success pixels weighted to half of the loss each, per batch (the
            target is mostly successes: ~3 % failures on the demo data).
        success_inputs (tuple): what the branch reads: ``('features',)`` (the paper: the
            features that feed ``conv_seg``) or ``('features', 'seg_confidence')``, which
            adds the detached max softmax and top-2 logit margin of the seg logits
            (:func:`seg_confidence_channels`).
        task_weighting (dict | None): config of ``UncertaintyWeightedLoss`` over the tasks
            ``seg`` and ``success`` (and ``depth``, as a ``'regression'`` task, with the depth
            branch) (Kendall et al.); None adds the losses with their weights.
        depth_branch (bool): add a per-pixel depth (or disparity) regression branch, a hidden
            1×1 conv + a 1-channel 1×1 conv, trained with an L1 loss against each sample's
            ``gt_depth_map`` (mmseg's ``LoadDepthAnnotation`` + ``PackSegInputs``) at label
            resolution; pixels with depth <= 0, non-finite depth or batch padding are
            ignored. Default False (two tasks, nothing else changes).
        depth_channels (int): channels of the depth branch's hidden layer. Default 32.
        depth_loss_weight (float): weight of the depth L1 loss. Default 1.0.
        predict_with_snapshot (bool): once a snapshot is taken, it predicts success at test
            time (the paper, default True); False predicts with the live (final) branch and
            keeps the snapshot only in the checkpoint (the study's choice on the demo data).

    Attributes:
        success_snapshot: a frozen copy of the branch, taken by ``SuccessSnapshotHook`` early
            in training (paper §3.2); once taken it predicts success in eval mode, while the
            seg branch keeps its final weights. Saved in checkpoints with ``snapshot_taken``.
        emit_success_channel (bool): set by ``SuccessEncoderDecoder``; ``predict`` then returns
            C + 1 channels, the last being the success logit (log-odds of success).
    """

    def __init__(
        self,
        *args,
        success_channels: int = 32,
        success_loss_weight: float = 1.0,
        success_class_weight: str = None,
        success_inputs=("features",),
        task_weighting: dict = None,
        depth_branch: bool = False,
        depth_channels: int = 32,
        depth_loss_weight: float = 1.0,
        predict_with_snapshot: bool = True,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if not isinstance(predict_with_snapshot, bool):
            raise ValueError(f"predict_with_snapshot must be True or False, got {predict_with_snapshot!r}")
        self.predict_with_snapshot = predict_with_snapshot
        if self.out_channels < 2:
            raise ValueError("success heads need a multi-class head (out_channels >= 2)")
        if success_class_weight not in (None, "balanced"):
            raise ValueError(f"success_class_weight must be None or 'balanced', got {success_class_weight!r}")
        success_inputs = tuple(success_inputs)
        if success_inputs not in (SUCCESS_INPUTS[:1], SUCCESS_INPUTS):
            raise ValueError(
                f"success_inputs must be {SUCCESS_INPUTS[:1]} or {SUCCESS_INPUTS}, got {success_inputs}"
            )
        self.success_class_weight = success_class_weight
        self.success_inputs = success_inputs
        extra = 2 if "seg_confidence" in success_inputs else 0
        self.success_branch = nn.Sequential(
            ConvModule(
                self.channels + extra,
                success_channels,
                1,
                conv_cfg=self.conv_cfg,
                norm_cfg=self.norm_cfg,
                act_cfg=self.act_cfg,
            ),
            nn.Conv2d(success_channels, 2, 1),
        )
        self.success_snapshot = copy.deepcopy(self.success_branch).requires_grad_(False)
        self.register_buffer("snapshot_taken", torch.tensor(False))
        self.success_loss_weight = success_loss_weight
        self.depth_branch = (
            nn.Sequential(
                ConvModule(
                    self.channels,
                    depth_channels,
                    1,
                    conv_cfg=self.conv_cfg,
                    norm_cfg=self.norm_cfg,
                    act_cfg=self.act_cfg,
                ),
                nn.Conv2d(depth_channels, 1, 1),
            )
            if depth_branch
            else None
        )
        self.depth_loss_weight = depth_loss_weight
        self.task_weighting = MODELS.build(task_weighting) if task_weighting else None
        tasks = ("seg", "success", "depth") if depth_branch else ("seg", "success")
        if self.task_weighting is not None and set(self.task_weighting.task_names) != set(tasks):
            raise ValueError(
                f"task_weighting must weight the tasks {list(tasks)} of this head "
                f"(depth_branch={depth_branch}), got "
                f"{list(self.task_weighting.task_names)}"
            )
        self.emit_success_channel = False

    @torch.no_grad()
    def take_success_snapshot(self):
        """Copy the success branch into the frozen snapshot (early checkpoint, §3.2)."""
        self.success_snapshot.load_state_dict(self.success_branch.state_dict())
        self.snapshot_taken.fill_(True)

    def cls_seg(self, feat):
        """Seg logits (N, C, h, w) and success logits (N, 2, h, w), packed as C + 2 channels,
        then the depth prediction (N, 1, h, w) with the depth branch (C + 3 channels)."""
        branch = (
            self.success_snapshot
            if not self.training and self.predict_with_snapshot and bool(self.snapshot_taken)
            else self.success_branch
        )
        seg_logits = super().cls_seg(feat)
        success_in = feat
        if "seg_confidence" in self.success_inputs:
            success_in = torch.cat([feat, seg_confidence_channels(seg_logits)], dim=1)
        outputs = [seg_logits, branch(success_in)]
        if self.depth_branch is not None:
            outputs.append(self.depth_branch(feat))
        return torch.cat(outputs, dim=1)

    def split_logits(self, packed):
        """Seg logits and success logits of a packed tensor (the depth channel is dropped)."""
        c = self.out_channels
        return packed[:, :c], packed[:, c : c + 2]

    def depth_of(self, packed):
        """The depth prediction (N, 1, h, w) of a packed tensor (``depth_branch=True``)."""
        return packed[:, self.out_channels + 2 : self.out_channels + 3]

    def loss_by_feat(self, packed, batch_data_samples):
        seg_logits, success_logits = self.split_logits(packed)
        losses = super().loss_by_feat(seg_logits, batch_data_samples)
        seg_label = self._stack_batch_gt(batch_data_samples)
        target = success_target(seg_logits, seg_label, self.ignore_index, self.align_corners)
        success_logits = resize(
            success_logits, size=target.shape[-2:], mode="bilinear", align_corners=self.align_corners
        )
        if (target == self.ignore_index).all():
            raise ValueError("every pixel of this batch has ignore_index: no success target")
        weight = (
            balanced_class_weight(target, self.ignore_index)
            if self.success_class_weight == "balanced"
            else None
        )
        losses["loss_success"] = self.success_loss_weight * F.cross_entropy(
            success_logits, target, weight=weight, ignore_index=self.ignore_index
        )
        losses["acc_success"] = accuracy(success_logits, target, ignore_index=self.ignore_index)
        if self.depth_branch is not None:
            losses["loss_depth"] = self.depth_loss_weight * self._depth_loss(
                self.depth_of(packed), batch_data_samples
            )
        if self.task_weighting is not None:
            losses = self._weight_tasks(losses)
        return losses

    def _depth_loss(self, depth_pred, batch_data_samples):
        """Masked L1 against the samples' ``gt_depth_map``; the batch padding (filled with
        ``seg_pad_val`` by the data preprocessor, a valid-looking depth) is masked out."""
        if not all("gt_depth_map" in s for s in batch_data_samples):
            raise ValueError(
                "depth_branch=True needs gt_depth_map in every SegDataSample (add "
                "LoadDepthAnnotation to the train pipeline)"
            )
        gt_depth = torch.stack([s.gt_depth_map.data for s in batch_data_samples]).float()
        if gt_depth.dim() == 3:
            gt_depth = gt_depth.unsqueeze(1)
        valid = torch.ones_like(gt_depth, dtype=torch.bool)
        height, width = gt_depth.shape[-2:]
        for i, sample in enumerate(batch_data_samples):
            left, right, top, bottom = sample.metainfo.get("padding_size", (0, 0, 0, 0))
            valid[i, :, :top] = valid[i, :, height - bottom :] = False
            valid[i, :, :, :left] = valid[i, :, :, width - right :] = False
        return masked_l1_depth_loss(
            depth_pred, gt_depth.to(depth_pred.device), self.align_corners, valid.to(depth_pred.device)
        )

    def _weight_tasks(self, losses):
        """Replace the raw task losses by their uncertainty-weighted terms; keep the raw values
        (and each task's sigma) under names without 'loss', which mmengine logs but never sums.
        """
        own = ("loss_success", "loss_depth")
        seg = sum(v for k, v in losses.items() if k.startswith("loss") and k not in own)
        raw = {"seg": seg, "success": losses["loss_success"]}
        if "loss_depth" in losses:
            raw["depth"] = losses["loss_depth"]
        weighted = self.task_weighting(raw)
        out = {k: v for k, v in losses.items() if not k.startswith("loss")}
        for task, value in raw.items():
            out[f"raw_{task}"] = value.detach()
            out[f"loss_{task}"] = weighted[task]
        for task, sigma in self.task_weighting.sigmas().items():
            out[f"sigma_{task}"] = torch.tensor(sigma)
        return out

    def predict_by_feat(self, packed, batch_img_metas):
        seg_logits, success_logits = self.split_logits(packed)
        if not self.emit_success_channel:
            return super().predict_by_feat(seg_logits, batch_img_metas)
        success_logit = success_logits[:, 1:2] - success_logits[:, 0:1]  # log-odds of success
        return super().predict_by_feat(torch.cat([seg_logits, success_logit], 1), batch_img_metas)


@MODELS.register_module()
class FCNSuccessHead(SuccessBranchMixin, FCNHead):
    """``FCNHead`` with a success branch (see :class:`SuccessBranchMixin`)."""


@MODELS.register_module()
class ASPPSuccessHead(SuccessBranchMixin, ASPPHead):
    """``ASPPHead`` (DeepLabV3) with a success branch (see :class:`SuccessBranchMixin`)."""


@MODELS.register_module()
class DepthwiseSeparableASPPSuccessHead(SuccessBranchMixin, DepthwiseSeparableASPPHead):
    """``DepthwiseSeparableASPPHead`` (DeepLabV3+) with a success branch on the features after
    the low-level-feature decoder (see :class:`SuccessBranchMixin`)."""
