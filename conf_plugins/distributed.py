"""The end of a multi-process run, for every launcher (detectron2 ``launch``, torchrun)."""
import torch.distributed as dist


def shutdown_process_group() -> None:
    """Barrier, then destroy every process group; a no-op outside torch.distributed.

    torch asks every process to call ``destroy_process_group()`` before it exits. Neither
    detectron2's ``launch`` nor mmengine's Runner does, and a gloo group (with its worker
    threads) left for the interpreter's exit to tear down can abort the process
    ("terminate called without an active exception") after all its work succeeded.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # no rank tears gloo down while another still uses it
        dist.destroy_process_group()
