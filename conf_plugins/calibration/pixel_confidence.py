"""Per-pixel confidence of class logits without the softmax tensor.

For logits ``z`` (C, ...) and temperature T, in one pass over the C class planes with a few
plane-sized buffers (never a (C, ...) temporary):

* prediction ``argmax_c z_c`` (first maximum, as ``torch.argmax``);
* max softmax ``1 / Σ_c exp((z_c − z_max) / T)``;
* margin ``(z_(1) − z_(2)) / T`` between the two largest logits;
* entropy ``log S − (1/S) Σ_c e_c (z_c − z_max)/T`` with ``e_c = exp((z_c − z_max)/T)``,
  ``S = Σ_c e_c`` (the softmax entropy, natural log).

Issue 14: the softmax over 19 classes dominated the segmentation metric's time; a class loop
over contiguous planes reads the logits once or twice and writes nothing of their size.
"""
import torch


def pixel_confidence(logits: torch.Tensor, temperature: float = 1.0, margin: bool = False,
                     entropy: bool = False):
    """``(max_softmax, prediction, margin or None, entropy or None)`` of ``logits`` (C, ...).

    Same values as ``(z / T).softmax(0).max(0)`` etc. to float rounding (tested).
    """
    if logits.dim() < 1 or logits.shape[0] < 2:
        raise ValueError(f"logits need at least two classes on dim 0, got {tuple(logits.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    z = logits if logits.is_floating_point() else logits.float()
    inv_t = 1.0 / float(temperature)
    top, pred = z.max(dim=0)  # one reduction over the class planes
    second = None
    if margin:
        second = torch.full_like(top, -torch.inf)
        for c in range(z.shape[0]):  # the largest logit below the top one (ties: equal)
            plane = z[c]
            second = torch.maximum(second, plane.masked_fill(pred == c, -torch.inf))
    total = torch.zeros_like(top)
    weighted = torch.zeros_like(top) if entropy else None
    buffer = torch.empty_like(top)
    shifted = torch.empty_like(top) if entropy else None
    for c in range(z.shape[0]):
        torch.sub(z[c], top, out=buffer)
        if inv_t != 1.0:
            buffer.mul_(inv_t)  # (z_c - z_max) / T <= 0
        if entropy:
            shifted.copy_(buffer)
        buffer.exp_()
        if entropy:
            weighted.addcmul_(buffer, shifted)
        total.add_(buffer)
    max_softmax = total.reciprocal_()
    gap = None if second is None else (top - second).mul_(inv_t)
    ent = None
    if entropy:
        ent = weighted.mul_(max_softmax).neg_().add_(max_softmax.log().neg())
    return max_softmax, pred, gap, ent
