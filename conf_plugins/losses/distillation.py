"""Logit distillation loss of the Distilled Dropout Network (DDN paper §III.C)."""

import torch

REDUCTIONS = ("mean", "sum", "none")


def logit_distillation_loss(
    student_logits: torch.Tensor, target_logits: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Squared L2 distance between student logits and (MC-dropout mean) target logits.

    DDN paper eq. (8), the ``L_DD`` term of the total loss eq. (7):
    ``L_DD = 1/N · Σ_i ‖f_w(x_i) − z_i‖²₂`` — summed over the classes of each sample and
    averaged over the ``N`` samples (proposals). Note this is ``C`` times
    ``F.mse_loss(f, z)``, which also averages over classes. The target is a constant: it
    is detached here, so a teacher output can be passed directly.

    Args:
        student_logits: ``[N, C]`` logits of the student.
        target_logits: ``[N, C]`` targets ``z`` (eq. 10: the mean of M teacher logit samples).
        reduction: ``'mean'`` (eq. 8), ``'sum'`` (Σ over samples) or ``'none'`` (``[N]``).

    With ``N = 0`` the ``'mean'`` is defined as 0, kept in the autograd graph of the student
    (the convention of detectron2's own box losses for an image without sampled proposals).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if student_logits.dim() != 2 or student_logits.shape != target_logits.shape:
        raise ValueError(
            "student and target logits must both be [N, C], got "
            f"{tuple(student_logits.shape)} and {tuple(target_logits.shape)}"
        )
    if not torch.isfinite(target_logits).all():
        raise ValueError("target logits contain NaN or inf")
    if not torch.isfinite(student_logits).all():
        raise ValueError("student logits contain NaN or inf")
    per_sample = (student_logits - target_logits.detach().to(student_logits.dtype)).pow(2).sum(1)
    if reduction == "none":
        return per_sample
    if reduction == "sum" or per_sample.numel() == 0:
        return per_sample.sum()
    return per_sample.mean()


@torch.no_grad()
def uniform_logits_like(logits: torch.Tensor) -> torch.Tensor:
    """All-zero logits shaped like ``logits``: softmax = ``1/(K+1)`` over the K+1 classes.

    The DDN paper (§V.A) gives ground-truth boxes that no MC-dropout detection associated
    with "a uniform distribution over the output classes" as distillation target, to make
    the student very uncertain on these hard samples. The target lives in logit space
    (eq. 8) and softmax ignores a common shift, so any all-equal row is uniform; zero is the
    one of smallest norm, the natural fixed point for a shift softmax cannot see.
    """
    if logits.dim() < 1 or logits.shape[-1] < 2:
        raise ValueError(f"need at least two classes in the last dim, got {tuple(logits.shape)}")
    return torch.zeros_like(logits)
