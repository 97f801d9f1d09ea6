"""UncertaintyWeightedLoss (Kendall et al.; see the module docstring for the forms)."""

import math

import pytest
import torch

from conf_plugins.losses import UncertaintyWeightedLoss


def test_loss_forms_and_total():
    crit = UncertaintyWeightedLoss(
        ["seg", "depth"], ["classification", "regression"], init_log_vars=[0.4, -1.2]
    )
    seg, depth = torch.tensor(2.0), torch.tensor(3.0)
    out = crit({"seg": seg, "depth": depth})
    assert out["seg"].item() == pytest.approx(math.exp(-0.4) * 2.0 + 0.2)
    assert out["depth"].item() == pytest.approx(0.5 * math.exp(1.2) * 3.0 - 0.6)
    assert out["total"].item() == pytest.approx(out["seg"].item() + out["depth"].item())
    assert crit.sigmas() == pytest.approx({"seg": math.exp(0.2), "depth": math.exp(-0.6)})


@pytest.mark.parametrize("task_type", ["classification", "regression"])
def test_optimum_log_variance(task_type):
    """d/ds = 0 at exp(s) = L (regression: σ² = MSE) and exp(s) = 2L (classification)."""
    crit = UncertaintyWeightedLoss(["t"], [task_type])
    loss = torch.tensor(4.0)
    optim = torch.optim.LBFGS(crit.parameters(), max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        optim.zero_grad()
        total = crit({"t": loss})["total"]
        total.backward()
        return total

    optim.step(closure)
    expected = 4.0 if task_type == "regression" else 8.0
    assert math.exp(crit.log_vars["t"].item()) == pytest.approx(expected, rel=1e-4)


def test_parameters_are_named_for_paramwise_rules():
    crit = torch.nn.ModuleDict({"loss": UncertaintyWeightedLoss(["a", "b"], ["regression"] * 2)})
    names = [n for n, _ in crit.named_parameters()]
    assert names == ["loss.log_vars.a", "loss.log_vars.b"]


def test_gradients_reach_the_log_variances_and_the_losses():
    crit = UncertaintyWeightedLoss(["a"], ["classification"])
    raw = torch.tensor(1.5, requires_grad=True)
    crit({"a": raw})["total"].backward()
    assert raw.grad.item() == pytest.approx(1.0)  # exp(-0) = 1
    assert crit.log_vars["a"].grad.item() == pytest.approx(-1.5 + 0.5)


def test_bad_inputs():
    crit = UncertaintyWeightedLoss(["a", "b"], ["classification", "regression"])
    with pytest.raises(KeyError, match=r"missing tasks \['b'\]"):
        crit({"a": torch.tensor(1.0)})
    with pytest.raises(KeyError, match=r"unexpected tasks \['c'\]"):
        crit({"a": torch.tensor(1.0), "b": torch.tensor(1.0), "c": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="not finite"):
        crit({"a": torch.tensor(float("nan")), "b": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="scalar"):
        crit({"a": torch.ones(2), "b": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="task types"):
        UncertaintyWeightedLoss(["a"], ["segmentation"])
    with pytest.raises(ValueError, match="unique"):
        UncertaintyWeightedLoss(["a", "a"], ["regression"] * 2)
    with pytest.raises(ValueError, match="initial log variances"):
        UncertaintyWeightedLoss(["a", "b"], ["regression"] * 2, init_log_vars=[0.0])
