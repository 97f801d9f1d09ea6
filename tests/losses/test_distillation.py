"""DDN logit distillation loss (DDN paper eq. 8) and uniform targets."""

import pytest
import torch

from conf_plugins.losses import logit_distillation_loss, uniform_logits_like


def test_sum_over_classes_mean_over_samples():
    student = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], requires_grad=True)
    target = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    # per sample: 0 + 4 + 9 = 13 and 1 + 1 + 1 = 3
    assert logit_distillation_loss(student, target).item() == pytest.approx(8.0)
    assert logit_distillation_loss(student, target, "sum").item() == pytest.approx(16.0)
    assert logit_distillation_loss(student, target, "none").tolist() == [13.0, 3.0]
    expected = torch.nn.functional.mse_loss(student, target) * 3
    assert logit_distillation_loss(student, target).item() == pytest.approx(expected.item())


def test_gradient_flows_to_student_only():
    student = torch.randn(4, 5, requires_grad=True)
    target = torch.randn(4, 5, requires_grad=True)
    logit_distillation_loss(student, target).backward()
    torch.testing.assert_close(student.grad, 2 * (student - target).detach() / 4)
    assert target.grad is None


def test_empty_batch_is_zero_and_differentiable():
    student = torch.zeros(0, 81, requires_grad=True)
    loss = logit_distillation_loss(student, torch.zeros(0, 81))
    assert loss.item() == 0.0 and loss.requires_grad


def test_uniform_logits_give_uniform_softmax():
    logits = torch.randn(3, 81, dtype=torch.float64, requires_grad=True)
    uniform = uniform_logits_like(logits)
    assert uniform.shape == logits.shape and uniform.dtype == logits.dtype
    assert not uniform.requires_grad
    torch.testing.assert_close(uniform.softmax(-1), torch.full_like(uniform, 1 / 81))


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        logit_distillation_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="NaN"):
        logit_distillation_loss(torch.zeros(1, 3), torch.tensor([[0.0, float("inf"), 0.0]]))
    with pytest.raises(ValueError, match="reduction"):
        logit_distillation_loss(torch.zeros(1, 3), torch.zeros(1, 3), "avg")
    with pytest.raises(ValueError, match="two classes"):
        uniform_logits_like(torch.zeros(2, 1))
