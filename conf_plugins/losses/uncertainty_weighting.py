"""Multi-task loss weighted by learned homoscedastic uncertainty (Kendall et al., CVPR 2018).

Each task ``i`` has one learnable scalar ``s_i = log σ_i²`` and contributes

* regression:      ``½·exp(−s_i)·L_i + s_i/2``   (``= L_i/(2σ_i²) + log σ_i``)
* classification:  ``exp(−s_i)·L_i + s_i/2``     (``= L_i/σ_i²    + log σ_i``)

Where the forms come from. The report (§2.2) derives the regression term from the Gaussian
likelihood of its eq. (1): ``−log N(y; f, σ²) = ‖y − f‖²/(2σ²) + ½·log σ² + const``, i.e.
``½·exp(−s)·L + s/2``. Its eq. (3) writes the regulariser as ``log σ²`` (= ``s``) after an
"∝"; that is a slip: ``½·exp(−s)·L + s`` is minimised at ``σ² = L/2``, not ``σ² = L``, and
would not give the σ's the report itself recovers in §2.3 (9.95 and 0.95 for true 10 and 1;
with ``s`` as regulariser they would come out near 7.1 and 0.71). The notes give the
original paper's regulariser, ``log σ₁σ₂`` = ``s₁/2 + s₂/2`` (the original's eq. 7, not in
papers/), which is what we use. For classification the report's eq. (4) is the softmax
scaled by ``1/σ²``; the original's approximation of its negative log-likelihood (the notes'
"joint loss"; the original's eqs. 9–10) is ``L/σ² + log σ = exp(−s)·L + s/2``: no ½ on the
data term, because the scale enters as ``1/σ²`` and not ``1/(2σ²)``.

Why ``log σ²`` is the parameter: it is unconstrained (σ² > 0 automatically) and avoids the
division by zero of a σ parametrisation; the report learns it too (§4). ``L_i`` must be a *mean*
per-sample loss (as mmseg/detectron2 losses are): the optimum ``σ_i² = L_i`` (regression)
then is the noise variance, independent of the batch size.
"""

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

TASK_TYPES = ("classification", "regression")


class UncertaintyWeightedLoss(nn.Module):
    """Sum of per-task losses weighted by learned ``exp(−s_i)`` (report eqs. 3–4, corrected).

    Args:
        task_names: one name per task; the keys expected by :meth:`forward`.
        task_types: ``'classification'`` or ``'regression'`` per task (see module docstring
            for the two loss forms).
        init_log_vars: initial ``s_i = log σ_i²``, one float for all tasks or one per task.
            ``0.0`` means σ = 1, i.e. every task starts with weight 1 (classification) or
            ½ (regression).

    The parameters live in ``self.log_vars``, an ``nn.ParameterDict`` keyed by task name, so
    their full names are ``<prefix>.log_vars.<task>``: an optimizer rule matching
    ``'log_vars'`` (mmengine ``paramwise_cfg=dict(custom_keys={'log_vars':
    dict(decay_mult=0.)})``, or a detectron2 param-group filter) exempts them from weight
    decay, as the method requires (decay would pull every σ towards 1).
    """

    def __init__(
        self,
        task_names: Sequence[str],
        task_types: Sequence[str],
        init_log_vars: float | Sequence[float] = 0.0,
    ):
        super().__init__()
        names, types = list(task_names), list(task_types)
        if not names:
            raise ValueError("UncertaintyWeightedLoss needs at least one task")
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique, got {names}")
        if len(types) != len(names):
            raise ValueError(f"{len(names)} task names but {len(types)} task types")
        bad = [t for t in types if t not in TASK_TYPES]
        if bad:
            raise ValueError(f"task types must be one of {TASK_TYPES}, got {bad}")
        if isinstance(init_log_vars, (int, float)):
            inits = [float(init_log_vars)] * len(names)
        else:
            inits = [float(v) for v in init_log_vars]
            if len(inits) != len(names):
                raise ValueError(f"{len(names)} tasks but {len(inits)} initial log variances")
        if not all(math.isfinite(v) for v in inits):
            raise ValueError(f"initial log variances must be finite, got {inits}")
        self.task_names = tuple(names)
        self.task_types = dict(zip(names, types))
        self.log_vars = nn.ParameterDict(
            {n: nn.Parameter(torch.tensor(v, dtype=torch.float32)) for n, v in zip(names, inits)}
        )

    def forward(self, losses: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Return ``{task: weighted term}`` for every task and ``'total'`` = their sum.

        ``losses`` must hold exactly the task names, each a finite scalar tensor.
        """
        given, expected = set(losses), set(self.task_names)
        if given != expected:
            raise KeyError(
                f"UncertaintyWeightedLoss: missing tasks {sorted(expected - given)}, "
                f"unexpected tasks {sorted(given - expected)}"
            )
        out = {}
        for name in self.task_names:
            loss = losses[name]
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise ValueError(f"loss of task {name!r} must be a scalar tensor, got {loss!r}")
            if not torch.isfinite(loss).all():
                raise ValueError(f"loss of task {name!r} is not finite: {loss.item()}")
            s = self.log_vars[name].to(loss.dtype)
            precision = torch.exp(-s)
            if self.task_types[name] == "regression":
                precision = 0.5 * precision
            out[name] = precision * loss.reshape(()) + 0.5 * s
        out["total"] = torch.stack([out[n] for n in self.task_names]).sum()
        return out

    @torch.no_grad()
    def sigmas(self) -> dict[str, float]:
        """``{task: σ_i = exp(s_i/2)}``, for logging."""
        return {n: math.exp(0.5 * float(self.log_vars[n])) for n in self.task_names}

    def extra_repr(self) -> str:
        return ", ".join(f"{n}: {self.task_types[n]}" for n in self.task_names)
