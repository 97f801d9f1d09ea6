"""Monte-Carlo dropout for mmseg segmentors: M dropout samples of the decode head, one pass."""

import contextlib

import torch
from mmengine.structures import PixelData
from mmseg.models import EncoderDecoder
from mmseg.registry import MODELS
from torch import nn

from conf_plugins.calibration.entropy import entropy, mutual_information

DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
EPS = 1e-12  # log of a mean probability that underflowed: log(EPS), not -inf


@contextlib.contextmanager
def sampled_dropout(module: nn.Module):
    """Put every dropout layer of ``module`` in training mode (sampling) for the block; the
    rest (batch norm above all) stays as it is."""
    layers = [m for m in module.modules() if isinstance(m, DROPOUT_TYPES)]
    modes = [m.training for m in layers]
    try:
        for m in layers:
            m.train()
        yield layers
    finally:
        for m, mode in zip(layers, modes):
            m.train(mode)


def mc_dropout_statistics(logits: torch.Tensor):
    """From M logit samples (M, N, C, h, w): log of the mean softmax p̄ (N, C, h, w), the
    predictive entropy H(p̄) and the mutual information H(p̄) − mean_m H(p_m) (N, 1, h, w),
    natural logarithms, 0 · log 0 = 0 (Gal & Ghahramani's MC dropout; the DDN paper's MC-M
    teacher; :mod:`conf_plugins.calibration.entropy`)."""
    probs = logits.float().softmax(dim=2)
    mean = probs.mean(dim=0)
    return (
        mean.clamp_min(EPS).log(),
        entropy(mean, dim=1).unsqueeze(1),
        mutual_information(probs, sample_dim=0, class_dim=2).unsqueeze(1),
    )


@MODELS.register_module()
class MCDropoutEncoderDecoder(EncoderDecoder):
    """Identical to ``EncoderDecoder`` except at test time, where the decode head's dropout
    is sampled ``mc_samples`` times: the backbone (and neck) run once; when the head's only
    dropout is the stock one before ``conv_seg``, the head's convolutions run once too and
    only ``conv_seg`` sees the M-fold repeated, independently dropped features; otherwise the
    whole head runs on its features repeated M times. Only dropout layers are in training
    mode. Every predicted ``SegDataSample`` carries

    * ``seg_logits``: log of the mean softmax p̄, so ``pred_sem_seg`` is its arg-max and the
      max softmax of these logits (``SegCalibrationMetric(confidence='max_softmax')``) is the
      MC mean-softmax confidence;
    * ``mc_entropy`` and ``mc_mutual_information``: (1, H, W) maps (nats).

    Training is the stock one. The statistics travel as two extra channels through the stock
    whole / slide inference and ``postprocess_result`` (padding, flip, resize), as the success
    log-odds do in ``SuccessEncoderDecoder``; test-time augmentation (``SegTTAModel``), which
    averages softmaxes of its own, is not supported.

    Args (beyond EncoderDecoder's):
        mc_samples (int): M >= 2 dropout samples. Default 10. Memory of the decode head grows
            M-fold (its input features are repeated M times).
    """

    def __init__(self, *args, mc_samples: int = 10, **kwargs):
        super().__init__(*args, **kwargs)
        if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 2:
            raise ValueError(f"mc_samples must be an int >= 2, got {mc_samples!r}")
        if not any(isinstance(m, DROPOUT_TYPES) for m in self.decode_head.modules()):
            raise ValueError(
                f"MC dropout needs dropout in the decode head: "
                f"{type(self.decode_head).__name__} has none (dropout_ratio=0?)"
            )
        if self.decode_head.out_channels < 2:
            raise ValueError("MCDropoutEncoderDecoder needs a multi-class decode head")
        self.mc_samples = mc_samples
        self.out_channels += 2  # slide inference allocates out_channels channels per pixel

    def encode_decode(self, inputs, batch_img_metas):
        if self.training:
            return super().encode_decode(inputs, batch_img_metas)
        features = self.extract_feat(inputs)
        m, n = self.mc_samples, inputs.shape[0]
        head = self.decode_head
        with sampled_dropout(head) as layers:
            if layers == [getattr(head, "dropout", None)]:
                # the stock heads' only dropout is the one before conv_seg: run everything
                # before it once and repeat its input M times (same samples, ~1/M the cost)
                handle = head.dropout.register_forward_pre_hook(
                    lambda module, args: (args[0].repeat(m, *[1] * (args[0].dim() - 1)),)
                )
                try:
                    logits = head.forward(features)
                finally:
                    handle.remove()
            else:
                logits = head.forward([f.repeat(m, *[1] * (f.dim() - 1)) for f in features])
        log_mean, entropy, mutual_information = mc_dropout_statistics(logits.view(m, n, *logits.shape[1:]))
        packed = torch.cat([log_mean, entropy, mutual_information], dim=1)
        return self.decode_head.predict_by_feat(packed, batch_img_metas)

    def postprocess_result(self, seg_logits, data_samples=None):
        data_samples = super().postprocess_result(seg_logits, data_samples)
        for sample in data_samples:
            packed = sample.seg_logits.data
            seg = packed[:-2]
            sample.set_data(
                {
                    "seg_logits": PixelData(data=seg),
                    "pred_sem_seg": PixelData(data=seg.argmax(dim=0, keepdim=True)),
                    "mc_entropy": PixelData(data=packed[-2:-1]),
                    "mc_mutual_information": PixelData(data=packed[-1:]),
                }
            )
        return data_samples
