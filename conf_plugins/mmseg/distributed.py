"""Multi-process training on CPU (gloo) through torchrun + mmengine, without changing mmengine.

mmengine's ``init_dist('pytorch')`` calls ``torch.cuda.set_device`` and its DDP wrapper
passes ``device_ids=[LOCAL_RANK]``; both fail without a GPU. The Runner skips its own init
when ``torch.distributed`` is already initialised, and a wrapper config with
``device_ids=None`` builds the stock ``MMDistributedDataParallel`` for CPU modules.
"""

import os

import torch
import torch.distributed as dist


def init_cpu_distributed_if_needed(cfg) -> bool:
    """Under torchrun on a machine without CUDA: start gloo and set a CPU DDP wrapper.

    Returns True when it did; with CUDA (or outside torchrun) it changes nothing and the
    stock mmengine launcher does its usual work.
    """
    if cfg.get("launcher", "none") != "pytorch" or torch.cuda.is_available():
        return False
    if "RANK" not in os.environ:
        raise RuntimeError("--launcher pytorch needs torchrun (RANK / WORLD_SIZE unset)")
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    cfg.model_wrapper_cfg = dict(
        type="MMDistributedDataParallel",
        device_ids=None,
        broadcast_buffers=False,
        find_unused_parameters=cfg.get("find_unused_parameters", False),
    )
    cfg.env_cfg = {**cfg.get("env_cfg", {}), "dist_cfg": dict(backend="gloo")}
    return True
