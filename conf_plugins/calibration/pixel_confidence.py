"""Per-pixel confidence of class logits without the softmax tensor.

For logits ``z`` (C, ...) and temperature T, in one pass over the logits, tile by tile of
pixels (temporaries of (C, tile), never of the logits' size):

* prediction ``argmax_c z_c`` (first maximum, as ``torch.argmax``);
* max softmax ``1 / Σ_c exp((z_c − z_max) / T)``;
* margin ``(z_(1) − z_(2)) / T`` between the two largest logits;
* entropy ``log S − (1/S) Σ_c e_c (z_c − z_max)/T`` with ``e_c = exp((z_c − z_max)/T)``,
  ``S = Σ_c e_c`` (the softmax entropy, natural log).

Speed: the softmax over 19 classes dominates the segmentation metric's time. On CPU,
float32 logits go through a fused C++ kernel (``conf_plugins/csrc/pixel_confidence.cpp``,
built by the environment bootstrap for the CPU that builds it, AVX-512 or AVX2: one pass,
everything in vector registers, torch's own vectorised exp, pixels split over torch's threads).
:func:`max_softmax_statistics` goes further for the metric: confidence, correctness and every
statistic of an image in one pass over cache-sized tiles. Without the kernel (not built, built
from another source, a CPU without its vector instructions) one warning says so and the torch
path below runs: cache-sized tiles of whole-tensor steps. The torch path is also the kernel's
test oracle.
"""

import math

import torch

from .kernel import fused_kernel

TILE_PIXELS = 1 << 14  # pixels per step on CPU: the C planes of a tile (1.2 MB at C = 19) stay in cache
LOG2_E = 1.0 / math.log(2.0)
MAX_BITMASK_CLASSES = 24  # class bit-weights 2^(C-1-c) add up exactly in float32 up to C = 24


def first_max_index(is_max: torch.Tensor, bit_weights: torch.Tensor, out: torch.Tensor):
    """Index of the first 1 along dim 0 of a 0/1 float (C, n) tile, into ``out`` (n,).

    ``Σ_c is_max_c · 2^(C-1-c)`` is an exact integer whose highest bit is the first maximum;
    ``frexp`` reads that bit exactly. (torch.max / argmax with indices over dim 0 run at a
    tenth of the speed of amax on CPU.)
    """
    code = bit_weights @ is_max  # (n,)
    torch.sub(is_max.shape[0], torch.frexp(code).exponent, out=out)
    return out


def pixel_confidence(
    logits: torch.Tensor,
    temperature: float = 1.0,
    margin: bool = False,
    entropy: bool = False,
    use_kernel: bool = True,
):
    """``(max_softmax, prediction, margin or None, entropy or None)`` of ``logits`` (C, ...).

    Same values as ``(z / T).softmax(0).max(0)`` etc. to float rounding (tested). Float32 CPU
    logits use the fused kernel when it is built (``use_kernel=False``: never). Otherwise, on CPU the
    pixels are taken in tiles of ``TILE_PIXELS``, so every temporary is (C, tile) and stays in
    cache (whole-plane steps are memory-bound); on a GPU in one step. The
    exponentials are ``exp2`` of ``(z_c − z_max)·log2(e)/T`` (same value, faster on CPU).
    """
    if logits.dim() < 1 or logits.shape[0] < 2:
        raise ValueError(f"logits need at least two classes on dim 0, got {tuple(logits.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    z = logits if logits.is_floating_point() else logits.float()
    num_classes, spatial = z.shape[0], z.shape[1:]
    flat = z.reshape(num_classes, -1)
    if not z.is_cuda and z.dtype == torch.float32 and use_kernel and fused_kernel() is not None:
        outputs = fused_kernel().pixel_confidence(flat.contiguous(), float(temperature), margin, entropy)
        shape = tuple(spatial)
        return (
            outputs[0].reshape(shape),
            outputs[1].reshape(shape),
            outputs[2].reshape(shape) if margin else None,
            outputs[3].reshape(shape) if entropy else None,
        )
    n = flat.shape[1]
    scale = LOG2_E / float(temperature)
    max_softmax = torch.empty(n, dtype=z.dtype, device=z.device)
    pred = torch.empty(n, dtype=torch.int64, device=z.device)
    gap = torch.empty_like(max_softmax) if margin else None
    ent = torch.empty_like(max_softmax) if entropy else None
    tile = max(n, 1) if z.is_cuda else TILE_PIXELS
    work = torch.empty(num_classes, min(tile, n), dtype=z.dtype, device=z.device)
    extra = torch.empty_like(work)
    bitmask = num_classes <= MAX_BITMASK_CLASSES
    bit_weights = torch.pow(2.0, torch.arange(num_classes - 1, -1, -1, dtype=z.dtype, device=z.device))
    for lo in range(0, n, tile):
        hi = min(lo + tile, n)
        part, top = flat[:, lo:hi], max_softmax[lo:hi]  # max_softmax holds z_max until the end
        shifted, other = work[:, : hi - lo], extra[:, : hi - lo]
        if bitmask:
            torch.amax(part, dim=0, out=top)
            torch.sub(part, top, out=shifted)
            is_max = torch.sign(shifted, out=other).add_(1.0)  # 1 where z_c == z_max (NaN stays)
            first_max_index(is_max, bit_weights, pred[lo:hi])
        else:
            torch.max(part, dim=0, out=(top, pred[lo:hi]))  # first maximum, as torch.argmax
            torch.sub(part, top, out=shifted)
        if not torch.isfinite(top).all():
            raise ValueError("logits contain NaN or +inf (or a pixel whose logits are all -inf)")
        if margin:  # the largest logit once the arg-max class is removed (ties: equal)
            others = other.copy_(part).scatter_(0, pred[None, lo:hi], -torch.inf)
            torch.sub(top, others.amax(dim=0), out=gap[lo:hi]).div_(float(temperature))
        shifted.mul_(scale)  # (z_c - z_max) log2(e) / T <= 0
        if entropy:
            weights = other.copy_(shifted)
        total = shifted.exp2_().sum(dim=0)
        if entropy:  # log S - (1/S) sum_c e_c (z_c - z_max)/T, with (z_c - z_max)/T = u_c ln 2
            terms = weights.mul_(shifted).nan_to_num_(nan=0.0)  # a -inf logit: -inf * 0 -> 0
            torch.div(terms.sum(dim=0), total, out=ent[lo:hi])
            ent[lo:hi].mul_(-math.log(2.0)).add_(total.log())
        torch.reciprocal(total, out=top)
    shape = tuple(spatial)
    return (
        max_softmax.reshape(shape),
        pred.reshape(shape),
        None if gap is None else gap.reshape(shape),
        None if ent is None else ent.reshape(shape),
    )


def max_softmax_statistics(
    logits: torch.Tensor,
    label: torch.Tensor,
    ignore_index: int,
    num_fine_bins: int,
    temperature: float = 1.0,
    num_classes: int = 0,
    num_bins: int = 10,
    prediction=None,
):
    """The statistics of one image's max softmax in one pass of the fused kernel, or None when
    the kernel is not available or the tensors are not CPU ones (then use
    :func:`pixel_confidence` + :meth:`CalibrationStats.update`, same values).

    Returns ``(CalibrationStats, DetectionBinStats(num_classes, (num_bins,)) or None,
    number of pixels whose argmax differs from ``prediction``)``: correct = (argmax == label),
    counted = (label != ignore_index); the class-wise sums are per argmax class (< num_classes).
    """
    from .binning import upper_edges
    from .detection_stats import DetectionBinStats
    from .stats import LOG_EPS, CalibrationStats

    kernel = fused_kernel()
    tensors = [logits, label] + ([] if prediction is None else [prediction])
    if kernel is None or any(t.is_cuda for t in tensors):
        return None
    num_logits = logits.shape[0]
    if num_logits < 2 or label.shape != logits.shape[1:]:
        raise ValueError(
            f"logits {tuple(logits.shape)} and label {tuple(label.shape)}: need (C >= 2, ...) and (...)"
        )
    if prediction is not None and prediction.shape != label.shape:
        raise ValueError(
            f"prediction {tuple(prediction.shape)} and label {tuple(label.shape)} differ in shape"
        )
    empty = torch.empty(0, dtype=torch.int64)
    fine, classwise, mismatches = kernel.calibration_statistics(
        logits.float().reshape(num_logits, -1).contiguous(),
        label.long().reshape(-1).contiguous(),
        empty if prediction is None else prediction.long().reshape(-1).contiguous(),
        int(ignore_index),
        float(temperature),
        upper_edges(num_fine_bins, torch.float32, "cpu"),
        upper_edges(num_bins, torch.float64, "cpu"),
        int(num_classes),
        LOG_EPS,
    )
    stats = CalibrationStats(num_fine_bins).add_bin_sums(fine)
    by_class = None
    if num_classes:
        by_class = DetectionBinStats(num_classes, (num_bins,))
        by_class.state += classwise.reshape(by_class.state.shape)
    return stats, by_class, int(mismatches)
