"""Logistic regression by Newton's method: the one fit behind Platt scaling of detection
scores and the fusion probability of success of segmentation (framework-free)."""

import torch
import torch.nn.functional as F

LOGIT_EPS = 1e-6  # probabilities clipped to [eps, 1 - eps] before logit
_NEWTON_STEPS = 100


def logit(p: torch.Tensor, eps: float = LOGIT_EPS) -> torch.Tensor:
    p = torch.as_tensor(p).double().clamp(eps, 1 - eps)
    return p.log() - (-p).log1p()


def logistic_loss(X: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> float:
    """Mean binary cross-entropy of sigmoid(X w) against targets ``y`` in [0, 1]."""
    z = X @ w
    return float((F.softplus(z) - y * z).mean())


def fit_logistic(X, y, init=None) -> torch.Tensor:
    """(d,) weights minimising :func:`logistic_loss` of features ``X`` (N, d) against soft or
    hard targets ``y`` (N,) in [0, 1]: Newton's method with step halving (the loss is
    convex), a 1e-9 ridge on the Hessian for separable or constant data, weights clamped to
    ±1e3. ``init`` defaults to zeros."""
    X, y = torch.as_tensor(X).double(), torch.as_tensor(y).double().reshape(-1)
    if X.dim() != 2 or X.shape[0] != y.numel() or X.shape[0] == 0:
        raise ValueError(
            f"need features (N, d) and targets (N,), N > 0, got {tuple(X.shape)} and {tuple(y.shape)}"
        )
    if not (torch.isfinite(X).all() and torch.isfinite(y).all() and ((y >= 0) & (y <= 1)).all()):
        raise ValueError("features must be finite and targets finite in [0, 1]")
    w = (
        torch.zeros(X.shape[1], dtype=torch.float64)
        if init is None
        else torch.as_tensor(init).double().clone()
    )
    current = logistic_loss(X, y, w)
    ridge = 1e-9 * torch.eye(X.shape[1], dtype=torch.float64)
    for _ in range(_NEWTON_STEPS):
        p = torch.sigmoid(X @ w)
        grad = X.T @ (p - y) / len(y)
        hess = (X * (p * (1 - p))[:, None]).T @ X / len(y) + ridge
        step = torch.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-6 and logistic_loss(X, y, w - scale * step) > current:
            scale /= 2
        if scale <= 1e-6:
            break
        w = (w - scale * step).clamp(-1e3, 1e3)
        previous, current = current, logistic_loss(X, y, w)
        if previous - current < 1e-12:
            break
    return w
