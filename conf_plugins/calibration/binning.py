"""Equal-width fine bins ``((k-1)/K, k/K]`` with exact float64 edges (the binning of the DDN
paper, §III, the sets ``D_k`` before eq. 13); see :mod:`.stats` for the conventions."""

import functools

import torch

MAX_FINE_BINS = 1_000_000  # binning below is exact for float32 input up to this K


@functools.lru_cache(maxsize=None)
def upper_edges(num_bins: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    """Upper edge of each fine bin, rounded *down* to ``dtype``.

    For a value ``v`` of ``dtype`` and the float64 edge ``e``: ``v > e`` iff ``v > down(e)``,
    where ``down(e)`` is the largest ``dtype`` value <= ``e``; comparisons in ``dtype``
    therefore agree with comparisons against the exact float64 edges.
    """
    exact = torch.arange(1, num_bins + 1, dtype=torch.float64) / num_bins
    edges = exact.to(dtype)
    too_big = edges.to(torch.float64) > exact
    edges[too_big] = torch.nextafter(edges[too_big], torch.tensor(-1.0, dtype=dtype))
    return edges.to(device)


def bin_index(values: torch.Tensor, num_bins: int) -> torch.Tensor:
    """0-based bin of each value in ``[0, 1]``: ``j`` such that ``j/K < v <= (j+1)/K``; 0 -> 0.

    ``values`` must already be validated and of :func:`~.checks.compute_dtype`. The candidate
    ``trunc(v*K - 1/2)`` is the true bin or the one below it (rounding errors are far below
    half a bin for ``K <= MAX_FINE_BINS``); one comparison against the exact edge fixes it.
    """
    upper = upper_edges(num_bins, values.dtype, str(values.device))
    index = torch.mul(values, num_bins).sub_(0.5).long()
    index += values > upper.index_select(0, index.reshape(-1)).view_as(index)
    return index
