"""TemperatureScaler: recovers a known temperature, is the NLL minimiser, validates input."""

import numpy as np
import pytest
import torch

from conf_plugins.calibration import TemperatureScaler


def _synthetic(t_true, n=20000, num_classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(n, num_classes, generator=g, dtype=torch.float64)
    labels = torch.multinomial(torch.softmax(logits / t_true, 1), 1, generator=g)[:, 0]
    return logits, labels


def _nll(logits, labels, t):
    return torch.nn.functional.cross_entropy(logits / t, labels).item()


@pytest.mark.parametrize("t_true", [0.5, 2.5])
def test_recovers_known_temperature(t_true):
    logits, labels = _synthetic(t_true)
    scaler = TemperatureScaler().fit(logits, labels)
    assert scaler.temperature == pytest.approx(t_true, rel=0.05)
    # and it is the NLL minimiser, not just close to the truth
    best = _nll(logits, labels, scaler.temperature)
    for t in np.linspace(0.3, 4.0, 75):
        assert best <= _nll(logits, labels, t) + 1e-12


def test_dense_logits_with_ignore_index_and_state_dict():
    logits, labels = _synthetic(1.7, n=4 * 7 * 8, num_classes=3, seed=1)
    dense = logits.float().reshape(4, 7, 8, 3).movedim(-1, 1)  # N, C, H, W
    dense_labels = labels.reshape(4, 7, 8).clone()  # N, H, W
    dense_labels[:, 0, :] = 255
    keep = dense_labels.reshape(-1) != 255
    ref = TemperatureScaler().fit(logits.float()[keep], labels[keep])
    scaler = TemperatureScaler().fit(dense, dense_labels, ignore_index=255)
    assert scaler.temperature == pytest.approx(ref.temperature, rel=1e-9)
    assert torch.allclose(scaler(dense), dense / scaler.temperature)
    restored = TemperatureScaler()
    restored.load_state_dict(scaler.state_dict())
    assert restored.temperature == scaler.temperature
    assert TemperatureScaler().temperature == 1.0  # identity before fit


def test_constant_logits_keep_temperature_one():
    scaler = TemperatureScaler().fit(torch.zeros(10, 4), torch.arange(10) % 4)
    assert scaler.temperature == 1.0


@pytest.mark.parametrize(
    "logits, labels, kw, match",
    [
        (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), {}, "at least one"),
        (torch.zeros(4, 3), torch.full((4,), 255), {"ignore_index": 255}, "at least one"),
        (torch.tensor([[0.0, float("nan")]]), torch.tensor([0]), {}, "NaN or inf"),
        (torch.tensor([[0.0, float("inf")]]), torch.tensor([0]), {}, "NaN or inf"),
        (torch.zeros(4, 3), torch.zeros(5, dtype=torch.long), {}, "shape"),
        (torch.zeros(4, 3), torch.tensor([0, 1, 3, 0]), {}, r"\[0, 3\)"),
        (torch.zeros(4, 3), torch.tensor([0, 1, -1, 0]), {}, r"\[0, 3\)"),
        (torch.zeros(4, 3), torch.zeros(4), {}, "integer"),
        (torch.zeros(4), torch.zeros(4, dtype=torch.long), {}, "shape"),
    ],
)
def test_bad_input_raises_value_error(logits, labels, kw, match):
    with pytest.raises(ValueError, match=match):
        TemperatureScaler().fit(logits, labels, **kw)


def test_separable_logits_hit_the_lower_bound_with_a_warning():
    labels = torch.arange(40) % 4
    logits = 10.0 * torch.nn.functional.one_hot(labels, 4).double()
    with pytest.warns(UserWarning, match="bound"):
        scaler = TemperatureScaler().fit(logits, labels)
    assert scaler.temperature == pytest.approx(1e-2)
