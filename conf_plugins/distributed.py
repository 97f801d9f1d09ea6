"""The end of a multi-process run, for every launcher (detectron2 ``launch``, torchrun)."""

import gc

import torch.distributed as dist


def shutdown_process_group() -> None:
    """Free what the finished run left, then barrier and destroy every process group; a no-op
    outside torch.distributed. Call it once the trainer / runner is no longer referenced.

    torch asks every process to call ``destroy_process_group()`` before it exits; neither
    detectron2's ``launch`` nor mmengine's Runner does. Destroying is not enough either: a
    finished runner or trainer usually sits in a reference cycle, and with it its DDP
    wrapper, whose reducer keeps the gloo group and tensors with Python references alive.
    Left to interpreter finalisation, their C++ destructors run while Python is being torn
    down and can abort the process ("terminate called without an active exception", exit
    -6) after all its work succeeded. ``gc.collect()`` frees them here, while the
    interpreter is fully alive.
    """
    gc.collect()
    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # no rank tears gloo down while another still uses it
        dist.destroy_process_group()
