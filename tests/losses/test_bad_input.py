"""The bad-input catalogue of the framework-free losses: each case a clear error
naming the bad value, or the documented result."""

import math

import pytest
import torch

from conf_plugins.losses import UncertaintyWeightedLoss, logit_distillation_loss
from conf_plugins.losses.distillation import uniform_logits_like


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(task_names=[], task_types=[]), "at least one task"),
        (dict(task_names=["a", "a"], task_types=["regression"] * 2), "unique"),
        (dict(task_names=["a", "b"], task_types=["regression"]), "2 task names but 1 task types"),
        (dict(task_names=["a"], task_types=["ranking"]), "task types must be one of"),
        (
            dict(task_names=["a"], task_types=["regression"], init_log_vars=[0.0, 1.0]),
            "1 tasks but 2 initial",
        ),
        (dict(task_names=["a"], task_types=["regression"], init_log_vars=math.nan), "finite"),
    ],
)
def test_uncertainty_weighting_construction_is_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UncertaintyWeightedLoss(**kwargs)


def test_uncertainty_weighting_inputs_are_checked():
    loss = UncertaintyWeightedLoss(["seg", "depth"], ["classification", "regression"])
    with pytest.raises(KeyError, match=r"missing tasks \['depth'\], unexpected tasks \['dpth'\]"):
        loss({"seg": torch.tensor(1.0), "dpth": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="'depth' must be a scalar tensor"):
        loss({"seg": torch.tensor(1.0), "depth": torch.ones(2)})
    with pytest.raises(ValueError, match="'seg' is not finite"):
        loss({"seg": torch.tensor(math.nan), "depth": torch.tensor(1.0)})
    out = loss({"seg": torch.tensor(2.0), "depth": torch.tensor(2.0)})  # documented forms, s = 0
    assert out["seg"].item() == pytest.approx(2.0) and out["depth"].item() == pytest.approx(1.0)


def test_distillation_inputs_are_checked():
    with pytest.raises(ValueError, match=r"both be \[N, C\], got \(3, 4\) and \(3, 5\)"):
        logit_distillation_loss(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="target logits contain NaN"):
        logit_distillation_loss(torch.zeros(1, 2), torch.tensor([[0.0, math.inf]]))
    with pytest.raises(ValueError, match="student logits contain NaN"):
        logit_distillation_loss(torch.tensor([[math.nan, 0.0]]), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="reduction must be one of"):
        logit_distillation_loss(torch.zeros(1, 2), torch.zeros(1, 2), reduction="avg")
    with pytest.raises(ValueError, match="at least two classes"):
        uniform_logits_like(torch.zeros(3, 1))
    student = torch.zeros(0, 4, requires_grad=True)  # no proposals: 0, kept in the graph
    empty = logit_distillation_loss(student, torch.zeros(0, 4))
    assert empty.item() == 0.0 and empty.requires_grad
