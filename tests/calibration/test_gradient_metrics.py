"""Gradient metrics (gradient paper §2) against plain autograd, one sample at a time."""

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

from conf_plugins.calibration.gradient_metrics import (
    METRICS,
    WHOLE_NETWORK,
    flat_gradient_metrics,
    last_layer_gradient_metrics,
    per_layer_gradient_metrics,
    pixel_gradient_metrics,
)

TOL = dict(rtol=1e-8, atol=1e-10)


def reference_metrics(gradient: torch.Tensor) -> dict[str, float]:
    """The paper's statistics of one flattened gradient, with numpy / scipy."""
    g = gradient.detach().double().numpy()
    return {
        "l1_norm": np.abs(g).sum(),
        "l2_norm": np.sqrt((g**2).sum()),
        "min": g.min(),
        "max": g.max(),
        "mean": g.mean(),
        "std": g.std(),
        "skewness": scipy.stats.skew(g),
        "kurtosis": scipy.stats.kurtosis(g),
    }


def nll_gradient(loss_fn, params) -> torch.Tensor:
    """Flattened gradient of one scalar loss w.r.t. ``params``, by ``backward``."""
    for p in params:
        p.grad = None
    loss_fn().backward()
    return torch.cat([p.grad.flatten() for p in params])


def assert_metrics_close(got: dict, expected: list[dict], index=lambda i: i):
    for name in METRICS:
        want = torch.tensor([e[name] for e in expected], dtype=torch.float64)
        have = torch.stack([got[name][index(i)] for i in range(len(expected))]).double()
        torch.testing.assert_close(have, want, **TOL, msg=f"metric {name}")


def predicted_nll(logits_row):
    return -logits_row.log_softmax(0)[logits_row.argmax()]


@pytest.mark.parametrize("include_bias", [True, False])
def test_last_linear_layer_matches_autograd(include_bias):
    layer = nn.Linear(6, 4).double()
    features = torch.randn(7, 6, dtype=torch.float64) * 3
    got = last_layer_gradient_metrics(features, layer(features), include_bias=include_bias)
    params = [layer.weight, layer.bias] if include_bias else [layer.weight]
    expected = [
        reference_metrics(nll_gradient(lambda: predicted_nll(layer(features[i])), params))
        for i in range(len(features))
    ]
    assert_metrics_close(got, expected)


def test_pixel_metrics_match_autograd_of_1x1_conv():
    conv = nn.Conv2d(5, 3, kernel_size=1).double()
    features = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    got = pixel_gradient_metrics(features, conv(features))
    assert all(v.shape == (2, 3, 4) for v in got.values())
    pixels = [(n, y, x) for n in range(2) for y in range(3) for x in range(4)]
    expected = [
        reference_metrics(
            nll_gradient(lambda: predicted_nll(conv(features)[n, :, y, x]), [conv.weight, conv.bias])
        )
        for n, y, x in pixels
    ]
    assert_metrics_close(got, expected, index=lambda i: pixels[i])


def test_closed_form_in_float32_handles_large_scales():
    """4th powers of 1e12 overflow float32; the moments are computed on normalised vectors."""
    features = torch.randn(5, 8, dtype=torch.float64) * 1e12
    logits = torch.randn(5, 3, dtype=torch.float64)
    exact = last_layer_gradient_metrics(features, logits)
    single = last_layer_gradient_metrics(features.float(), logits.float())
    for name in METRICS:
        assert torch.isfinite(single[name]).all(), name
        atol = 1e-3 * exact["l2_norm"].max().item() if name in ("mean", "min", "max") else 1e-4
        torch.testing.assert_close(single[name].double(), exact[name], rtol=1e-4, atol=atol)


def test_mean_is_zero_and_std_is_scaled_l2_norm():
    features = torch.randn(4, 6, dtype=torch.float64)
    logits = torch.randn(4, 3, dtype=torch.float64)
    got = last_layer_gradient_metrics(features, logits)
    torch.testing.assert_close(got["mean"], torch.zeros(4, dtype=torch.float64), atol=1e-15, rtol=0)
    torch.testing.assert_close(got["std"], got["l2_norm"] / (3 * 7) ** 0.5)


def test_saturated_prediction_gives_zero_gradient_metrics_not_nan():
    features = torch.randn(2, 4, dtype=torch.float64)
    logits = torch.tensor([[1000.0, 0.0, 0.0], [0.0, 0.5, 0.0]], dtype=torch.float64)
    got = last_layer_gradient_metrics(features, logits)
    for name in METRICS:
        assert got[name][0] == 0, name
        assert torch.isfinite(got[name]).all()
    assert got["l2_norm"][1] > 0
    no_input = last_layer_gradient_metrics(torch.zeros(1, 4), torch.randn(1, 3), include_bias=False)
    assert all(v.item() == 0 for v in no_input.values())


def test_metric_subset_and_input_errors():
    features, logits = torch.randn(3, 4), torch.randn(3, 5)
    assert list(last_layer_gradient_metrics(features, logits, metrics=("max", "l1_norm"))) == [
        "max",
        "l1_norm",
    ]
    with pytest.raises(ValueError, match="metrics"):
        last_layer_gradient_metrics(features, logits, metrics=("entropy",))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        last_layer_gradient_metrics(features, logits[:2])
    with pytest.raises(ValueError, match="NaN"):
        last_layer_gradient_metrics(features, logits.index_fill(0, torch.tensor([1]), float("nan")))
    with pytest.raises(ValueError, match="2 classes"):
        last_layer_gradient_metrics(features, logits[:, :1])
    with pytest.raises(ValueError, match=r"\[N, D, H, W\]"):
        pixel_gradient_metrics(torch.randn(1, 4, 3, 3), torch.randn(1, 2, 3, 2))


def test_flat_gradient_metrics_matches_scipy():
    gradients = torch.randn(4, 30, dtype=torch.float64).pow(3)
    assert_metrics_close(flat_gradient_metrics(gradients), [reference_metrics(g) for g in gradients])


def tiny_mlp():
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def tiny_cnn():
    """The paper's CNN (§3) in miniature: conv, LeakyReLU(0.1), max-pool, BN, dense."""
    return nn.Sequential(
        nn.Conv2d(1, 3, 3),
        nn.LeakyReLU(0.1),
        nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 3, bias=False),
        nn.BatchNorm2d(4),
        nn.LeakyReLU(0.1),
        nn.Flatten(),
        nn.Linear(4 * 1 * 1, 10),
    )


@pytest.mark.parametrize("make_model,input_shape", [(tiny_mlp, (6, 4)), (tiny_cnn, (5, 1, 8, 8))])
def test_per_layer_metrics_match_autograd(make_model, input_shape):
    model = make_model().double()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial running statistics
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    model.eval()
    inputs = torch.randn(*input_shape, dtype=torch.float64)
    got = per_layer_gradient_metrics(model, inputs, chunk_size=2)

    layers: dict[str, list] = {}
    for name, p in model.named_parameters():
        layers.setdefault(name.rpartition(".")[0], []).append(p)
    assert set(got) == set(layers) | {WHOLE_NETWORK}
    groups = {**layers, WHOLE_NETWORK: list(model.parameters())}
    for layer, params in groups.items():
        expected = [
            reference_metrics(nll_gradient(lambda: predicted_nll(model(inputs[i : i + 1])[0]), params))
            for i in range(len(inputs))
        ]
        assert_metrics_close(got[layer], expected)


def test_per_layer_last_layer_agrees_with_closed_form():
    model = tiny_mlp().double().eval()
    inputs = torch.randn(8, 4, dtype=torch.float64)
    features = model[:-1](inputs)
    closed = last_layer_gradient_metrics(features, model(inputs))
    general = per_layer_gradient_metrics(model, inputs, whole_network=False)
    for name in METRICS:
        torch.testing.assert_close(general["4"][name], closed[name], **TOL)


def test_per_layer_requires_eval_mode():
    with pytest.raises(ValueError, match="eval"):
        per_layer_gradient_metrics(tiny_mlp(), torch.randn(2, 4))
