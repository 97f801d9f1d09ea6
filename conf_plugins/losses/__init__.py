"""Framework-free losses (torch only): uncertainty weighting, DDN logit distillation."""

from .distillation import logit_distillation_loss, uniform_logits_like
from .uncertainty_weighting import TASK_TYPES, UncertaintyWeightedLoss

__all__ = ["TASK_TYPES", "UncertaintyWeightedLoss", "logit_distillation_loss", "uniform_logits_like"]
