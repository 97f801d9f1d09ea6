"""Registers the framework-free ``UncertaintyWeightedLoss`` in mmseg's MODELS registry."""

from mmseg.registry import MODELS

from conf_plugins.losses import UncertaintyWeightedLoss

MODELS.register_module(module=UncertaintyWeightedLoss)
