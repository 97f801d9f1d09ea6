"""A Fast R-CNN box head with dropout after its FC layers, for MC-dropout sampling."""

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling.roi_heads.box_head import ROI_BOX_HEAD_REGISTRY, FastRCNNConvFCHead


@ROI_BOX_HEAD_REGISTRY.register()
class DropoutFastRCNNConvFCHead(FastRCNNConvFCHead):
    """Identical to ``FastRCNNConvFCHead`` except for dropout after each FC layer's ReLU.

    Dropout has no parameters, so state dicts are the stock head's: stock checkpoints load
    and our checkpoints load into the stock head. Dropout is active in training and when
    ``mc_sampling`` is True (MC-dropout inference, DDN teacher targets; DDN paper §III.A).
    """

    @configurable
    def __init__(self, input_shape, *, dropout: float = 0.0, **kwargs):
        super().__init__(input_shape, **kwargs)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MODEL.ROI_BOX_HEAD.DROPOUT must be in [0, 1), got {dropout}")
        if dropout > 0 and not self.fcs:
            raise ValueError("MODEL.ROI_BOX_HEAD.DROPOUT > 0 needs FC layers (NUM_FC > 0)")
        self.dropout = dropout
        self.mc_sampling = False

    @classmethod
    def from_config(cls, cfg, input_shape):
        return {**super().from_config(cfg, input_shape), "dropout": cfg.MODEL.ROI_BOX_HEAD.DROPOUT}

    def _drop(self, x):
        return F.dropout(x, self.dropout, training=self.training or self.mc_sampling)

    def forward(self, x):
        for name, layer in self.named_children():
            x = layer(x)
            if name.startswith("fc_relu"):
                x = self._drop(x)
        return x

    def forward_samples(self, x, num_samples: int):
        """``num_samples`` dropout samples of the head's output, shape (M, R, C), in one pass.

        The layers up to the first dropout are deterministic, so they run once; the rest runs
        on the M-fold batch. Dropout masks are drawn sample by sample, layer by layer, exactly
        as M successive ``forward`` calls with dropout on would draw them, so both give the
        same samples from the same RNG state (tests rely on this).
        """
        layers = list(self.named_children())
        cut = next(i for i, (name, _) in enumerate(layers) if name.startswith("fc_relu")) + 1
        for _, layer in layers[:cut]:
            x = layer(x)
        num_rois, keep = x.shape[0], 1.0 - self.dropout
        widths = [fc.out_features for fc in self.fcs]
        masks = [
            [torch.empty(num_rois, w, dtype=x.dtype, device=x.device).bernoulli_(keep) for w in widths]
            for _ in range(num_samples)
        ]
        masks = [torch.stack([m[k] for m in masks]).div_(keep) for k in range(len(widths))]
        x = (x.unsqueeze(0) * masks[0]).reshape(num_samples * num_rois, -1)
        k = 1
        for name, layer in layers[cut:]:
            x = layer(x)
            if name.startswith("fc_relu"):
                x = (x.reshape(num_samples, num_rois, -1) * masks[k]).reshape(x.shape)
                k += 1
        return x.reshape(num_samples, num_rois, -1)


def sample_predictions(box_head, box_predictor, box_features, num_samples: int):
    """M MC-dropout samples of (class logits (M, R, K+1), box deltas (M, R, 4K)), batched."""
    if not isinstance(box_head, DropoutFastRCNNConvFCHead):
        raise TypeError(
            "MC-dropout sampling needs MODEL.ROI_BOX_HEAD.NAME = "
            f"'DropoutFastRCNNConvFCHead', got {type(box_head).__name__}"
        )
    if box_head.dropout == 0.0:
        raise ValueError(
            "MC-dropout sampling with MODEL.ROI_BOX_HEAD.DROPOUT = 0 gives M "
            "identical samples; set a dropout rate > 0"
        )
    if num_samples < 1:
        raise ValueError(f"number of MC-dropout samples must be >= 1, got {num_samples}")
    feats = box_head.forward_samples(box_features, num_samples)
    m, r = feats.shape[:2]
    logits, deltas = box_predictor(feats.reshape(m * r, -1))
    return logits.reshape(m, r, -1), deltas.reshape(m, r, -1)
