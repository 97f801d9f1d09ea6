"""The frozen MC-dropout teacher of the DDN student (box head + predictor only)."""

import copy
import logging
import math
import os

import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

from .box_head import DropoutFastRCNNConvFCHead, sample_predictions


class DropoutTeacher(nn.Module):
    """A frozen copy of a trained dropout box head + box predictor.

    Shares the student's pooled ROI features: only the box head and predictor run, M times
    in one batched pass (:func:`sample_predictions`). Never trained: no grad, eval mode.
    """

    def __init__(self, box_head, box_predictor, dropout: float):
        super().__init__()
        if not isinstance(box_head, DropoutFastRCNNConvFCHead):
            raise TypeError(
                "the DDN teacher needs MODEL.ROI_BOX_HEAD.NAME = "
                f"'DropoutFastRCNNConvFCHead', got {type(box_head).__name__}"
            )
        self.box_head = copy.deepcopy(box_head)
        self.box_head.dropout = dropout
        self.box_predictor = copy.deepcopy(box_predictor)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_checkpoint(cls, path: str, box_head, box_predictor, dropout: float):
        """Build from the student's modules and load the teacher's trained weights."""
        if not path:
            raise ValueError(
                "MODEL.DDN.TEACHER_WEIGHTS is empty: train the dropout teacher "
                "first (configs/demo/teacher.yaml or configs/teacher_r50.yaml) "
                "and point this key at its model_final.pth"
            )
        if not os.path.isfile(path):
            raise FileNotFoundError(f"MODEL.DDN.TEACHER_WEIGHTS: no such file: {path}")
        teacher = cls(box_head, box_predictor, dropout)
        _load_box_weights(teacher, path)
        return teacher

    def train(self, mode: bool = True):  # always frozen; dropout is switched on per call
        return super().train(False)

    @torch.no_grad()
    def sample(self, box_features, num_samples: int):
        """(logits (M, R, K+1), deltas (M, R, 4K or 4)) of M dropout samples."""
        return sample_predictions(self.box_head, self.box_predictor, box_features, num_samples)


def _load_box_weights(teacher: DropoutTeacher, path: str) -> None:
    """Load ``roi_heads.box_head.*`` / ``roi_heads.box_predictor.*`` of a detector checkpoint.

    Through detectron2's public ``DetectionCheckpointer.load`` (any format it reads: .pth,
    model-zoo .pkl), on a view that names the teacher's modules as in the detector. The
    checkpointer only warns about missing weights, so every tensor starts as NaN and one still
    NaN afterwards was not in the file (or had another shape): that is an error.
    """
    view = nn.Module()
    view.roi_heads = nn.Module()
    view.roi_heads.box_head, view.roi_heads.box_predictor = teacher.box_head, teacher.box_predictor
    tensors = [t for t in (*view.parameters(), *view.buffers()) if t.is_floating_point()]
    with torch.no_grad():
        for t in tensors:
            t.fill_(math.nan)
    checkpointer = DetectionCheckpointer(view)
    level = checkpointer.logger.level  # the rest of the detector is "unused" here: not news
    checkpointer.logger.setLevel(logging.ERROR)
    try:
        checkpointer.load(path)
    finally:
        checkpointer.logger.setLevel(level)
    missing = sorted(
        name
        for name, t in (*view.named_parameters(), *view.named_buffers())
        if t.is_floating_point() and torch.isnan(t).any()
    )
    if missing:
        raise ValueError(
            f"MODEL.DDN.TEACHER_WEIGHTS={path} does not match the box head "
            f"(missing or of another shape): {missing}"
        )
