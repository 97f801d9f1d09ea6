"""The compiled kernels of ``conf_plugins/csrc/pixel_confidence.cpp`` (built by
``tools/env/kernel.sh``, i.e. ``make env``): per-pixel confidence of logits and the per-bin
statistics of :class:`~conf_plugins.calibration.stats.CalibrationStats`. Callers fall back to
their torch path when :func:`fused_kernel` is None."""

import hashlib
import os
import warnings

import torch

KERNEL_SOURCE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "csrc", "pixel_confidence.cpp")
_kernel_state = {}
_RUNS_ON = {"AVX2": ("AVX2", "AVX512"), "AVX512": ("AVX512",)}  # built for -> CPU capabilities


def fused_kernel():
    """The compiled kernel module, or None (with one warning) when it is missing, stale (built
    from another source than the one in the package) or built for vector instructions this CPU lacks."""
    if "module" not in _kernel_state:
        _kernel_state["module"], reason = None, None
        try:
            from conf_plugins import _pixel_kernel as module
        except ImportError as error:
            reason = f"not built ({error}): run `make env`"
        else:
            with open(KERNEL_SOURCE, "rb") as f:
                sha = hashlib.sha256(f.read()).hexdigest()
            if module.SOURCE_SHA != sha:
                reason = "stale: built from another version of its source; run `make env`"
            elif torch.backends.cpu.get_cpu_capability() not in _RUNS_ON[module.BUILT_FOR]:
                reason = (
                    f"built for {module.BUILT_FOR}, which this CPU (or ATEN_CPU_CAPABILITY) lacks "
                    f"({torch.backends.cpu.get_cpu_capability()}): run `make env` on this machine"
                )
            else:
                _kernel_state["module"] = module
        if reason:
            warnings.warn(
                f"the fused pixel-confidence kernel is {reason}; using the torch path (same values, slower)"
            )
    return _kernel_state["module"]
