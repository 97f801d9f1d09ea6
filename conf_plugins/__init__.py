"""conf_plugins: calibrated confidence for detection and segmentation.

Subpackages:
  calibration  framework-free statistics, metrics, calibrators, gradient metrics, plots
  losses       framework-free losses (uncertainty weighting, logit distillation)
  detectron2   detectron2 components (DDN ROI heads, dropout box head, evaluator, demo data)
  mmseg        mmsegmentation components (success heads, hooks, metric, demo data)
  compat       every compatibility shim, in one place
"""

__version__ = "0.1.0"
