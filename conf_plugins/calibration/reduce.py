"""The one collective of the mergeable statistics: a flat float64 sum over ranks."""

import torch


def sum_over_ranks(flat: torch.Tensor, group=None):
    """``flat`` summed over the ranks of ``group`` (a CPU tensor), or None without
    torch.distributed. One all-reduce; on CUDA for the NCCL backend, on CPU otherwise (gloo)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return None
    device = "cpu"
    if dist.get_backend(group) == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    flat = flat.to(device)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    return flat.cpu()
