"""Normalised prediction entropy (gradient-metrics paper eq. 1; DDN paper eq. 17 unnormalised)."""
import math

import torch


def _num_classes(x: torch.Tensor, dim: int) -> int:
    num_classes = x.shape[dim]
    if num_classes < 2:
        raise ValueError(f"normalised entropy needs at least 2 classes along dim {dim}, "
                         f"got {num_classes}")
    return num_classes


def normalized_entropy(probs: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """E = −1/log(C) · Σ_y p_y log p_y along ``dim`` (gradient-metrics paper eq. 1), in [0, 1].

    ``0 · log 0 = 0``. ``probs`` are class probabilities (e.g. a softmax); the result has
    ``dim`` removed. Multiply by ``log(C)`` for the unnormalised entropy of DDN eq. 17.
    """
    num_classes = _num_classes(probs, dim)
    return -torch.special.xlogy(probs, probs).sum(dim) / math.log(num_classes)


def entropy_from_logits(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """:func:`normalized_entropy` of ``softmax(logits, dim)``, computed stably from log-softmax."""
    num_classes = _num_classes(logits, dim)
    log_p = torch.log_softmax(logits, dim)
    p = log_p.exp()
    # 0 · log 0 = 0 where p underflows; NaN logits stay NaN (p > 0 is False for NaN)
    terms = torch.where((p > 0) | p.isnan(), p * log_p, torch.zeros((), dtype=p.dtype,
                                                                      device=p.device))
    return -terms.sum(dim) / math.log(num_classes)
