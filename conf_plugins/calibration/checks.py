"""Input checks shared by the calibration statistics: tensors from tensors, arrays or
sequences; counts, thresholds, values in [0, 1], binary labels and masks, each refused
with a ValueError that names the argument."""

import numbers

import numpy as np
import torch

from .binning import MAX_FINE_BINS


def as_count(value, name: str, upper: int = MAX_FINE_BINS) -> int:
    """``value`` (int or numpy integer, not bool) as an int in [1, upper]; else ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= int(value) <= upper:
        raise ValueError(f"{name} must be an integer in [1, {upper}], got {value!r}")
    return int(value)


def as_threshold(value, name: str = "threshold") -> float:
    """``value`` as a Python float in (0, 1]; ValueError otherwise.

    A numpy float32 / float16 scalar stands for the decimal it prints as
    (``np.float32(0.3)`` -> 0.3), not for its binary expansion 0.30000001192…
    """
    if isinstance(value, (np.float32, np.float16)):
        value = float(str(value))
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number in (0, 1], got {value!r}")
    value = float(value)
    if not 0 < value <= 1:  # also refuses NaN; at 0, c == 0 and c in (0, 1/K] share a bin
        raise ValueError(f"{name} must be in (0, 1] (confident = confidence > {name}), got {value!r}")
    return value


def compute_dtype(values: torch.Tensor) -> torch.dtype:
    """float64 input stays float64; every other input is evaluated in float32 (exact upcast)."""
    return torch.float64 if values.dtype == torch.float64 else torch.float32


def as_tensor(x, name: str) -> torch.Tensor:
    """A tensor view of ``x`` (tensor, numpy array or sequence)."""
    if isinstance(x, torch.Tensor):
        return x.detach()
    try:
        array = np.asarray(x)
        if any(stride < 0 for stride in array.strides):  # e.g. a[::-1]; torch needs >= 0
            array = array.copy()
        return torch.from_numpy(array)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: cannot convert {type(x).__name__} to a tensor") from err


def as_unit_interval(x, name: str, mask=None) -> torch.Tensor:
    """``x`` as a floating tensor of :func:`compute_dtype` whose (unmasked) values are in [0, 1].

    Raises ValueError on NaN, inf or values outside [0, 1] among the values that count;
    masked-out entries may hold anything and are replaced by 0.
    """
    x = as_tensor(x, name)
    if x.is_complex():
        raise ValueError(f"{name} must be real, got {x.dtype}")
    x = x.to(compute_dtype(x)) if x.is_floating_point() else x.to(torch.float64)
    if x.numel() == 0:
        return x
    lo, hi = torch.aminmax(x)
    if bool(lo >= 0) and bool(hi <= 1):  # False for NaN
        return x
    counted = x if mask is None else x[mask]
    if not torch.isfinite(counted).all():
        raise ValueError(f"{name} contains NaN or inf")
    if counted.numel() and not (counted.min() >= 0 and counted.max() <= 1):
        raise ValueError(
            f"{name} must lie in [0, 1], got values in "
            f"[{counted.min().item():.6g}, {counted.max().item():.6g}]"
        )
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


def as_binary(x, name: str, mask=None) -> torch.Tensor:
    """``x`` as a bool tensor; raises ValueError unless every counted value is 0/1 (or bool)."""
    x = as_tensor(x, name)
    if x.dtype == torch.bool:
        return x
    valid = (x == 0) | (x == 1)
    if mask is not None:
        valid |= ~mask
    if not valid.all():
        raise ValueError(f"{name} must be bool or 0/1, got other values")
    return x != 0


def as_mask(mask, shape) -> torch.Tensor:
    """``mask`` as a bool tensor of ``shape`` (True = the sample counts)."""
    mask = as_tensor(mask, "mask")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor/array, got {mask.dtype}")
    if mask.shape != shape:
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {tuple(shape)}")
    return mask


def validated_pairs(values, labels, mask, value_name: str, label_name: str):
    """Checked (values in [0, 1], binary labels, mask) tensors of equal shape, or None when
    nothing is left to count (empty input or an all-False mask). Shared input rules of
    :meth:`CalibrationStats.update` and ``BayesBinningCalibrator.update``."""
    v = as_tensor(values, value_name)
    b = as_tensor(labels, label_name).to(v.device)
    if b.shape != v.shape:
        raise ValueError(
            f"{value_name} has shape {tuple(v.shape)} but {label_name} has shape {tuple(b.shape)}"
        )
    if mask is not None:
        mask = as_mask(mask, v.shape).to(v.device)
        if not mask.any():
            return None
    if v.numel() == 0:
        return None
    return as_unit_interval(v, value_name, mask), as_binary(b, label_name, mask), mask
