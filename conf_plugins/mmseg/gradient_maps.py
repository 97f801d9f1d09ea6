"""Per-pixel gradient uncertainty maps of an mmseg decode head (gradient paper §2, SPEC §4).

Every stock mmseg decode head classifies pixels with ``conv_seg``, a 1×1 convolution: at
each pixel of the feature map a linear layer ``z = W h + b`` on the head's features ``h``.
The gradient of ``−log p_ŷ`` (``ŷ`` the pixel's arg-max class, paper eq. 3–5) w.r.t. that
layer's weights is ``(p − e_ŷ) ⊗ [h, 1]``, so its metrics (L1 / L2 norm, min, max, mean,
std, skewness, kurtosis; paper §2) have a closed form per pixel
(:func:`~conf_plugins.calibration.gradient_metrics.pixel_gradient_metrics`) and cost about
as much as the softmax: one forward pass, no backward pass.
"""

from collections.abc import Sequence

import numpy as np
import torch
from mmseg.models.utils import resize
from torch import nn

from conf_plugins.calibration.entropy import entropy_from_logits
from conf_plugins.calibration.gradient_metrics import METRICS, pixel_gradient_metrics
from conf_plugins.calibration.plots import plot_confidence_heatmap


@torch.no_grad()
def pixel_gradient_maps(
    segmentor,
    inputs: torch.Tensor,
    size: Sequence[int] | None = None,
    metrics: Sequence[str] = METRICS,
    include_bias: bool = True,
) -> dict[str, dict[str, torch.Tensor]]:
    """Gradient-metric and entropy maps of ``segmentor.decode_head.conv_seg``.

    A forward hook on ``conv_seg`` captures its input features and output logits during one
    whole-image forward (``segmentor(inputs, mode="tensor")``); the auxiliary head is not
    run. The logits are those of the seg classes only, also for heads that add channels
    after ``conv_seg`` (e.g. the success heads of this package).

    Args:
        segmentor: an mmseg segmentor in eval mode (the metrics are an inference-time
            quantity; dropout before ``conv_seg`` would make them random), whose decode
            head classifies with a 1×1 ``nn.Conv2d`` ``conv_seg`` called once per forward.
        inputs: ``[N, 3, H, W]`` preprocessed images, i.e.
            ``segmentor.data_preprocessor(data, False)["inputs"]``.
        size: ``(H', W')`` of the resized maps; default ``inputs``' ``(H, W)``.
        metrics: names from ``gradient_metrics.METRICS``.
        include_bias: the gradient covers ``conv_seg``'s weight and bias (True) or weight.

    Returns ``{"feature": maps, "image": maps}``; ``maps`` is ``{name: [N, h, w]}`` at the
    resolution of ``conv_seg`` (``"feature"``) or ``{name: [N, H', W']}`` bilinearly resized
    like the seg logits (``"image"``), for each metric and ``"entropy"`` (normalised entropy
    of the pixel's softmax, paper eq. 1). The resized maps interpolate the pixel metrics;
    they are a visualisation / per-image-pixel feature, not the metrics of interpolated
    logits. Crop any padding and resize to the original shape as for the predictions.
    """
    if segmentor.training:
        raise ValueError("pixel_gradient_maps needs segmentor.eval(): the metrics are defined at inference")
    head = segmentor.decode_head
    conv = getattr(head, "conv_seg", None)
    if not isinstance(conv, nn.Conv2d) or conv.kernel_size != (1, 1) or conv.groups != 1:
        raise TypeError(
            "pixel_gradient_maps needs a decode head whose classifier `conv_seg` "
            f"is a 1x1 nn.Conv2d, got {type(conv).__name__}"
        )
    if inputs.dim() != 4:
        raise ValueError(f"inputs must be [N, 3, H, W], got {tuple(inputs.shape)}")
    calls = []
    handle = conv.register_forward_hook(lambda module, args, out: calls.append((args[0], out)))
    try:
        segmentor(inputs, mode="tensor")
    finally:
        handle.remove()
    if len(calls) != 1:
        raise RuntimeError(f"conv_seg ran {len(calls)} times in one forward, expected once")
    features, logits = calls[0]
    feature = pixel_gradient_metrics(features, logits, include_bias, metrics)
    feature["entropy"] = entropy_from_logits(logits, dim=1)
    size = tuple(size) if size is not None else tuple(inputs.shape[-2:])
    stacked = torch.stack(list(feature.values()), dim=1)
    resized = resize(stacked, size=size, mode="bilinear", align_corners=head.align_corners)
    return {"feature": feature, "image": {name: resized[:, i] for i, name in enumerate(feature)}}


def plot_gradient_heatmap(
    image, metric_map, path, scale: float | None = None, title: str | None = None, mask=None
) -> str:
    """Heat-map PNG of one gradient-metric map with :func:`plot_confidence_heatmap`.

    Shows the gradient confidence ``1 − |m| / scale`` clipped to [0, 1] (``scale``: the
    map's largest ``|m|`` by default; pass a fixed one to compare images), so that, as in
    the other heat-maps, bright means certain. ``image`` (HxWx3 uint8 or None), ``mask``
    and the return value are as for :func:`plot_confidence_heatmap`; ``metric_map`` is HxW.
    """
    magnitude = np.abs(
        np.asarray(
            metric_map.detach().cpu().double() if isinstance(metric_map, torch.Tensor) else metric_map,
            dtype=np.float64,
        )
    )
    if scale is None:
        finite = magnitude[np.isfinite(magnitude)]
        scale = float(finite.max()) if finite.size else 0.0
    confidence = 1.0 - magnitude / scale if scale > 0 else np.ones_like(magnitude)
    return plot_confidence_heatmap(
        image,
        np.clip(confidence, 0.0, 1.0),
        path,
        title=title or f"gradient confidence 1 - |m| / {scale:.3g}",
        mask=mask,
    )
