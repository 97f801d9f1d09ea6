"""Temperature scaling (Guo et al. 2017; the STL-scaled baseline of the success-prediction
paper §4): one scalar T, fitted on held-out logits by minimising the NLL, calibrated
probabilities softmax(z / T)."""

import math
import warnings

import torch
from torch import nn

T_MIN, T_MAX = 1e-2, 1e2  # search interval for T; a fit at a bound means T is not identifiable


def _flatten_logits(logits, labels, dim: int, ignore_index):
    """``logits`` as float64 (N, C) and ``labels`` as int64 (N,), ignored entries dropped."""
    logits = torch.as_tensor(logits).detach()
    labels = torch.as_tensor(labels).detach()
    if logits.dim() < 2:
        raise ValueError(f"logits must have a class dimension, got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point, got {logits.dtype}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    dim = dim % logits.dim()
    expected = logits.shape[:dim] + logits.shape[dim + 1 :]
    if labels.shape != expected:
        raise ValueError(
            f"labels have shape {tuple(labels.shape)}, expected {tuple(expected)} "
            f"for logits of shape {tuple(logits.shape)} with classes on dim {dim}"
        )
    num_classes = logits.shape[dim]
    logits = logits.movedim(dim, -1).reshape(-1, num_classes)
    labels = labels.reshape(-1).to(logits.device, torch.int64)  # uint8 / int16 labels too
    if ignore_index is not None:
        keep = labels != ignore_index
        logits, labels = logits[keep], labels[keep]
    if labels.numel() == 0:
        raise ValueError(
            "temperature scaling needs at least one labelled sample, got none "
            "(empty input or everything ignored)"
        )
    if not torch.isfinite(logits).all():
        raise ValueError("logits contain NaN or inf")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"labels must be in [0, {num_classes}) (or ignore_index="
            f"{ignore_index}), got values in [{labels.min()}, {labels.max()}]"
        )
    return logits.to(torch.float64), labels


def _nll_slope(beta: float, logits: torch.Tensor, labels: torch.Tensor):
    """dNLL/dβ and d²NLL/dβ² of NLL(β) = mean[logsumexp(β z) − β z_y], β = 1/T.

    NLL is convex in β: the slope E_p[z] − z_y increases, its derivative is Var_p(z) >= 0.
    """
    p = torch.softmax(beta * logits, dim=1)
    mean_z = (p * logits).sum(1)
    var_z = (p * (logits - mean_z[:, None]) ** 2).sum(1)
    slope = (mean_z - logits.gather(1, labels[:, None])[:, 0]).mean()
    return float(slope), float(var_z.mean())


def _check_loaded_temperature(module, state_dict, prefix, *args):
    """Refuse a saved temperature that is not a finite number in [T_MIN, T_MAX]."""
    value = state_dict.get(prefix + "log_temperature")
    if value is None:
        return  # reported by load_state_dict as a missing key
    value = torch.as_tensor(value)
    if (
        value.numel() != 1
        or not torch.isfinite(value).all()
        or not math.log(T_MIN) - 1e-9 <= float(value) <= math.log(T_MAX) + 1e-9
    ):
        raise ValueError(
            f"{prefix}log_temperature must be one finite value in "
            f"[log {T_MIN:g}, log {T_MAX:g}], got {value.flatten()[:4].tolist()}"
        )


class TemperatureScaler(nn.Module):
    """Divides logits by a fitted temperature T (identity until :meth:`fit`).

    T is stored as the buffer ``log_temperature`` so ``state_dict`` round-trips and ``.to()``
    moves it. :meth:`fit` minimises the mean NLL over T in [T_MIN, T_MAX]; the NLL is convex
    in β = 1/T, so a safeguarded Newton iteration on β (bisection fallback) finds the global
    minimum.
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("log_temperature", torch.zeros((), dtype=torch.float64))
        self.register_load_state_dict_pre_hook(_check_loaded_temperature)

    @property
    def temperature(self) -> float:
        return float(self.log_temperature.exp())

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits / T`` (elementwise, any shape)."""
        return logits / self.log_temperature.exp().to(dtype=logits.dtype, device=logits.device)

    @torch.no_grad()
    def fit(
        self, logits, labels, ignore_index=None, max_iter: int = 100, dim: int = 1, tol: float = 1e-10
    ) -> "TemperatureScaler":
        """Fit T on held-out ``logits`` (classes on ``dim``: (N, C) or (N, C, H, W)) and labels.

        Labels equal to ``ignore_index`` are left out. Raises ValueError on empty input,
        NaN/inf logits, mismatched shapes or labels outside [0, C). All samples are held in
        memory as float64; subsample pixels for very large calibration sets.
        """
        z, y = _flatten_logits(logits, labels, dim, ignore_index)
        lo, hi = 1.0 / T_MAX, 1.0 / T_MIN
        slope_lo, _ = _nll_slope(lo, z, y)
        slope_hi, _ = _nll_slope(hi, z, y)
        if slope_hi - slope_lo <= 1e-12 * (1 + abs(slope_lo)):  # flat NLL (constant logits)
            beta = 1.0
        elif slope_lo >= 0 or slope_hi <= 0:  # monotone NLL: the minimum is at a bound
            beta = lo if slope_lo >= 0 else hi
            warnings.warn(
                f"temperature scaling: the NLL minimum lies at T = {1 / beta:g}, "
                f"the bound of [{T_MIN:g}, {T_MAX:g}]; the logits carry (almost) "
                "no information about the labels or are already (near) one-hot"
            )
        else:
            beta = min(max(1.0, lo), hi)
            for _ in range(max_iter):
                slope, curvature = _nll_slope(beta, z, y)
                if slope > 0:
                    hi = beta
                else:
                    lo = beta
                step = beta - slope / curvature if curvature > 0 else math.nan
                new = step if lo < step < hi else 0.5 * (lo + hi)
                if abs(new - beta) <= tol * beta or hi - lo <= tol * lo:
                    beta = new
                    break
                beta = new
        self.log_temperature.fill_(-math.log(beta))
        return self

    def extra_repr(self) -> str:
        return f"temperature={self.temperature:.4f}"
