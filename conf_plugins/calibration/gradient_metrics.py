"""Gradient uncertainty metrics (Oberdiek, Rottmann & Gottschalk, gradient paper §2–3).

The metric of a sample is a summary statistic of the gradient, w.r.t. the weights, of the
negative log-likelihood at the *predicted* class, ``L = −log p_ŷ`` with ``ŷ = argmax p``
(paper eqs. 3–5). Large values mean the network would have to "re-learn" a lot if its
prediction were the truth, which the paper reads as uncertainty. Statistics (§2):

* ``l1_norm``, ``l2_norm``: ``‖g‖₁``, ``‖g‖₂``
* ``min``, ``max``, ``mean``: of the entries of ``g``
* ``std``: population standard deviation (``ddof = 0``; paper Table 1)
* ``skewness``: ``m₃ / m₂^{3/2}``; ``kurtosis``: *excess* kurtosis ``m₄ / m₂² − 3``, with
  ``m_k`` the population central moments (the paper does not define them; these are
  ``scipy.stats.skew`` / ``scipy.stats.kurtosis`` with their defaults). A zero gradient
  (a prediction certain to float precision, so ``m₂ = 0``) gets skewness and kurtosis 0
  rather than NaN, so that such samples can still be fed to a meta-classifier.

Two paths:

* :func:`last_layer_gradient_metrics` / :func:`pixel_gradient_metrics`: closed form for a
  final linear or 1×1-conv layer ``z = W h + b``. Its per-sample gradient is the outer
  product ``a ⊗ b`` with ``a = p − e_ŷ ∈ R^C`` and ``b = [h, 1] ∈ R^{D+1}`` (the bias block
  is ``a`` itself, as if ``h`` had an extra entry 1). Every statistic follows from a few
  reductions of ``a`` and ``b`` without forming the ``C·(D+1)`` entries:
  ``‖a⊗b‖₁ = ‖a‖₁‖b‖₁``, ``‖a⊗b‖₂ = ‖a‖₂‖b‖₂``, power sums
  ``Σ_{ij} (a_i b_j)^k = (Σ a_i^k)(Σ b_j^k)`` give the moments, and the extremes of the
  products are products of the extremes, ``max = max(a_max b_max, a_max b_min, a_min b_max,
  a_min b_min)`` (likewise ``min``). Because ``Σ a = Σ p − 1 = 0``, the mean is 0 (up to
  rounding) and ``std = ‖g‖₂ / √(C(D+1))``: for this layer they carry no extra information.
* :func:`per_layer_gradient_metrics`: any small ``nn.Module`` classifier, exact per-sample
  gradients of every layer with ``torch.func`` (``vmap`` of ``grad`` of
  ``functional_call``), for the paper's layer-wise metrics (§2, §4).
"""

from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

METRICS = ("l1_norm", "l2_norm", "min", "max", "mean", "std", "skewness", "kurtosis")
WHOLE_NETWORK = "<all>"  # key of the metrics of the gradient of all layers together
_MOMENT_METRICS = ("mean", "std", "skewness", "kurtosis")


def _check_metrics(metrics: Iterable[str]) -> tuple[str, ...]:
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"metrics must be a non-empty subset of {METRICS}, got {metrics}")
    return metrics


def _standardised_moments(m2, m3, m4):
    """Skewness and excess kurtosis from central moments; 0 where ``m2 == 0``."""
    degenerate = m2 <= 0
    safe_m2 = torch.where(degenerate, torch.ones_like(m2), m2)
    skew = torch.where(degenerate, torch.zeros_like(m2), m3 / safe_m2.pow(1.5))
    kurt = torch.where(degenerate, torch.zeros_like(m2), m4 / safe_m2.pow(2) - 3.0)
    return skew, kurt


def _outer_product_metrics(a, b, dim: int, with_one: bool, metrics) -> dict:
    """Statistics of the entries of ``a ⊗ [b, 1]`` (or ``a ⊗ b``), reduced over ``dim``.

    ``a`` and ``b`` have the same shape except along ``dim`` (sizes C and D).
    """
    extra = 1 if with_one else 0
    count = a.shape[dim] * (b.shape[dim] + extra)
    out = {}
    if "l1_norm" in metrics:
        out["l1_norm"] = a.abs().sum(dim) * (b.abs().sum(dim) + extra)
    if "l2_norm" in metrics:
        out["l2_norm"] = a.pow(2).sum(dim).sqrt() * (b.pow(2).sum(dim) + extra).sqrt()
    if "min" in metrics or "max" in metrics:
        a_min, a_max = a.amin(dim), a.amax(dim)
        b_min, b_max = b.amin(dim), b.amax(dim)
        if with_one:
            b_min, b_max = b_min.clamp(max=1.0), b_max.clamp(min=1.0)
        corners = torch.stack([a_min * b_min, a_min * b_max, a_max * b_min, a_max * b_max])
        if "min" in metrics:
            out["min"] = corners.amin(0)
        if "max" in metrics:
            out["max"] = corners.amax(0)
    if any(m in metrics for m in _MOMENT_METRICS):
        # Moments of a/‖a‖∞ ⊗ b/‖b‖∞ (no under/overflow of 4th powers), scaled back;
        # skewness and kurtosis are scale-free.
        a_scale = a.abs().amax(dim, keepdim=True)
        b_scale = b.abs().amax(dim, keepdim=True)
        if with_one:
            b_scale = b_scale.clamp(min=1.0)
        a_n = a / torch.where(a_scale > 0, a_scale, torch.ones_like(a_scale))
        b_n = b / torch.where(b_scale > 0, b_scale, torch.ones_like(b_scale))
        one = 1.0 / b_scale.squeeze(dim) if with_one else None  # bias entry 1, normalised
        raw = []
        for k in (1, 2, 3, 4):
            b_sum = b_n.pow(k).sum(dim) + (one.pow(k) if with_one else 0.0)
            raw.append(a_n.pow(k).sum(dim) * b_sum / count)
        mu, r2, r3, r4 = raw
        m2 = (r2 - mu * mu).clamp(min=0)
        m3 = r3 - 3 * mu * r2 + 2 * mu.pow(3)
        m4 = r4 - 4 * mu * r3 + 6 * mu * mu * r2 - 3 * mu.pow(4)
        scale = a_scale.squeeze(dim) * b_scale.squeeze(dim)
        out["mean"] = mu * scale
        out["std"] = m2.sqrt() * scale
        out["skewness"], out["kurtosis"] = _standardised_moments(m2, m3, m4)
    return {m: out[m] for m in metrics}


def _check_finite(name, tensor):
    if not tensor.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {tensor.dtype}")
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} contain NaN or inf")


@torch.no_grad()
def _closed_form(features, logits, include_bias, metrics):
    _check_finite("features", features)
    _check_finite("logits", logits)
    if logits.shape[1] < 2:
        raise ValueError(f"need at least 2 classes, got logits of shape {tuple(logits.shape)}")
    dtype = torch.promote_types(features.dtype, logits.dtype)
    probs = logits.to(dtype).softmax(1)
    one_hot = nn.functional.one_hot(logits.argmax(1), logits.shape[1]).movedim(-1, 1)
    return _outer_product_metrics(
        probs - one_hot.to(dtype), features.to(dtype), 1, include_bias, _check_metrics(metrics)
    )


def last_layer_gradient_metrics(
    features: torch.Tensor, logits: torch.Tensor, include_bias: bool = True, metrics: Sequence[str] = METRICS
) -> dict[str, torch.Tensor]:
    """Per-sample metrics of ``∇_{W,b} −log p_ŷ`` for a last linear layer ``logits = W h + b``.

    Args:
        features: ``[N, D]`` inputs ``h`` of the layer.
        logits: ``[N, C]`` its outputs (softmax over dim 1 gives ``p``).
        include_bias: the gradient is ``[vec(∇W), ∇b]`` (True) or ``vec(∇W)`` alone.
        metrics: names from :data:`METRICS`.

    Returns ``{metric: [N] tensor}`` (dtype: ``features`` and ``logits`` promoted), no autograd
    graph.
    Cost O(N·(C + D)) time and memory: the N×C×D gradients are never formed.
    """
    if features.dim() != 2 or logits.dim() != 2 or features.shape[0] != logits.shape[0]:
        raise ValueError(
            "features must be [N, D] and logits [N, C], got "
            f"{tuple(features.shape)} and {tuple(logits.shape)}"
        )
    return _closed_form(features, logits, include_bias, metrics)


def pixel_gradient_metrics(
    features: torch.Tensor, logits: torch.Tensor, include_bias: bool = True, metrics: Sequence[str] = METRICS
) -> dict[str, torch.Tensor]:
    """Per-pixel metrics for a final 1×1 convolution (a linear layer applied at every pixel).

    Args:
        features: ``[N, D, H, W]`` input of the 1×1 conv.
        logits: ``[N, C, H, W]`` its output, at the same resolution (before any upsampling).

    Returns ``{metric: [N, H, W] tensor}``: pixel (n, y, x) gets the metrics of the gradient
    of ``−log p_ŷ`` at that pixel alone, computed in place along the channel dim.
    """
    if (
        features.dim() != 4
        or logits.dim() != 4
        or features.shape[0] != logits.shape[0]
        or features.shape[2:] != logits.shape[2:]
    ):
        raise ValueError(
            "features must be [N, D, H, W] and logits [N, C, H, W], got "
            f"{tuple(features.shape)} and {tuple(logits.shape)}"
        )
    return _closed_form(features, logits, include_bias, metrics)


@torch.no_grad()
def flat_gradient_metrics(
    gradients: torch.Tensor, metrics: Sequence[str] = METRICS
) -> dict[str, torch.Tensor]:
    """Metrics of explicit per-sample gradients ``[N, P]`` (one flattened gradient per row)."""
    metrics = _check_metrics(metrics)
    if gradients.dim() != 2 or gradients.shape[1] == 0:
        raise ValueError(f"gradients must be [N, P] with P > 0, got {tuple(gradients.shape)}")
    out = {
        "l1_norm": lambda g: g.abs().sum(1),
        "l2_norm": lambda g: g.pow(2).sum(1).sqrt(),
        "min": lambda g: g.amin(1),
        "max": lambda g: g.amax(1),
    }
    result = {m: out[m](gradients) for m in metrics if m in out}
    if any(m in metrics for m in _MOMENT_METRICS):
        mean = gradients.mean(1)
        centred = gradients - mean[:, None]
        m2, m3, m4 = (centred.pow(k).mean(1) for k in (2, 3, 4))
        skew, kurt = _standardised_moments(m2, m3, m4)
        moments = {"mean": mean, "std": m2.sqrt(), "skewness": skew, "kurtosis": kurt}
        result.update({m: moments[m] for m in metrics if m in moments})
    return {m: result[m] for m in metrics}


def _module_of(param_name: str) -> str:
    return param_name.rpartition(".")[0]


def per_layer_gradient_metrics(
    model: nn.Module,
    inputs: torch.Tensor,
    metrics: Sequence[str] = METRICS,
    whole_network: bool = True,
    chunk_size: int | None = None,
) -> dict[str, dict[str, torch.Tensor]]:
    """Per-sample, per-layer metrics of ``∇_w −log p_ŷ`` for a classifier ``model``.

    Args:
        model: maps ``[N, ...]`` inputs to ``[N, C]`` logits, in eval mode (the metrics are
            an inference-time quantity, paper §2; dropout or batch statistics would make a
            sample's gradient depend on the rest of the batch or on chance).
        inputs: ``[N, ...]`` batch; each sample is run alone (batch of one) under ``vmap``.
        metrics: names from :data:`METRICS`.
        whole_network: also report the metrics of all trainable parameters together under
            the key :data:`WHOLE_NETWORK` (paper §2, "the whole gradient on all layers").
        chunk_size: samples per ``vmap`` chunk, to bound memory (``None``: all at once).

    Returns ``{module name: {metric: [N] tensor}}``, one entry per module owning trainable
    parameters, its weight and bias gradients flattened together (in registration order);
    parameters registered on ``model`` itself belong to the module name ``''``.
    """
    metrics = _check_metrics(metrics)
    if model.training:
        raise ValueError(
            "per_layer_gradient_metrics needs model.eval(): the metrics are defined at inference"
        )
    _check_finite("inputs", inputs)
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("model has no trainable parameters")
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    with torch.no_grad():
        logits = model(inputs)
    if logits.dim() != 2 or logits.shape[0] != inputs.shape[0] or logits.shape[1] < 2:
        raise ValueError(f"model must return [N, C>=2] logits, got {tuple(logits.shape)}")
    _check_finite("logits", logits)
    predicted = logits.argmax(1)

    def nll_at_prediction(p, x, y):
        out = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return -out.log_softmax(1).squeeze(0).gather(0, y.unsqueeze(0)).squeeze(0)

    grads = vmap(grad(nll_at_prediction), in_dims=(None, 0, 0), chunk_size=chunk_size)(
        params, inputs, predicted
    )
    layers: dict[str, list[torch.Tensor]] = {}
    for name, g in grads.items():
        layers.setdefault(_module_of(name), []).append(g.reshape(g.shape[0], -1))
    result = {layer: flat_gradient_metrics(torch.cat(parts, 1), metrics) for layer, parts in layers.items()}
    if whole_network:
        result[WHOLE_NETWORK] = flat_gradient_metrics(
            torch.cat([g.reshape(g.shape[0], -1) for g in grads.values()], 1), metrics
        )
    return result
