"""Prediction entropy and the mutual information of sampled predictions, natural logarithms,
``0 · log 0 = 0`` throughout (the limit; ``torch.special.xlogy``).

* :func:`entropy`: H[p] = −Σ_y p_y log p_y (DDN paper eq. 17);
* :func:`normalized_entropy`: H[p] / log C in [0, 1] (gradient-metrics paper eq. 1);
* :func:`mutual_information`: H[p̄] − mean_m H[p_m] of M sampled predictions p_m with mean
  p̄ (MC dropout's epistemic part, Gal's BALD).
"""

import math

import torch


def _num_classes(x: torch.Tensor, dim: int) -> int:
    num_classes = x.shape[dim]
    if num_classes < 2:
        raise ValueError(f"normalised entropy needs at least 2 classes along dim {dim}, got {num_classes}")
    return num_classes


def entropy(probs: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """H = −Σ_y p_y log p_y along ``dim`` (nats, ``0 · log 0 = 0``); ``dim`` removed."""
    return -torch.special.xlogy(probs, probs).sum(dim)


def mutual_information(samples_probs: torch.Tensor, sample_dim: int = 0, class_dim: int = -1) -> torch.Tensor:
    """I = H[p̄] − (1/M) Σ_m H[p_m] ≥ 0, p̄ = (1/M) Σ_m p_m, of M sampled class
    probabilities along ``sample_dim`` (classes along ``class_dim``); both dims removed.

    Non-negative by the concavity of H; rounding can make it a hair negative where the samples
    agree, so it is clamped at 0.
    """
    ndim = samples_probs.dim()
    sample_dim, class_dim = sample_dim % ndim, class_dim % ndim
    if sample_dim == class_dim:
        raise ValueError(f"sample_dim and class_dim are both {sample_dim}")
    predictive = entropy(samples_probs.mean(sample_dim), class_dim - (sample_dim < class_dim))
    expected = entropy(samples_probs, class_dim).mean(sample_dim - (class_dim < sample_dim))
    return (predictive - expected).clamp_min(0.0)


def normalized_entropy(probs: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """E = −1/log(C) · Σ_y p_y log p_y along ``dim`` (gradient-metrics paper eq. 1), in [0, 1].

    ``0 · log 0 = 0``. ``probs`` are class probabilities (e.g. a softmax); the result has
    ``dim`` removed. Multiply by ``log(C)`` for the unnormalised entropy of DDN eq. 17
    (:func:`entropy`).
    """
    num_classes = _num_classes(probs, dim)
    return entropy(probs, dim) / math.log(num_classes)


def entropy_from_logits(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """:func:`normalized_entropy` of ``softmax(logits, dim)``, computed stably from log-softmax."""
    num_classes = _num_classes(logits, dim)
    log_p = torch.log_softmax(logits, dim)
    p = log_p.exp()
    # 0 · log 0 = 0 where p underflows; NaN logits stay NaN (p > 0 is False for NaN)
    terms = torch.where((p > 0) | p.isnan(), p * log_p, torch.zeros((), dtype=p.dtype, device=p.device))
    return -terms.sum(dim) / math.log(num_classes)
