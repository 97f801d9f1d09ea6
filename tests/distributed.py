"""Run a function in N spawned processes joined by gloo: the one way every test goes multi-process.

What keeps it from flaking on a loaded machine:
* a FileStore rendezvous in a fresh folder: no TCP port to pick, collide with or wait on, and
  no store-server thread in rank 0;
* results travel through ``torch.save`` files, not a ``multiprocessing.Queue`` (whose feeder
  thread must flush before exit);
* each rank ends with :func:`conf_plugins.distributed.shutdown_process_group` (gc, barrier,
  destroy), as our tools do, so nothing that holds the gloo group is left for interpreter
  finalisation, where its destruction can abort the process ("terminate called without an
  active exception", exit -6).
"""

import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conf_plugins.distributed import shutdown_process_group


def _rank_main(rank, world_size, folder, fn, args):
    dist.init_process_group(
        "gloo", init_method="file://" + os.path.join(folder, "store"), rank=rank, world_size=world_size
    )
    try:
        torch.save(fn(rank, world_size, *args), os.path.join(folder, f"result{rank}.pt"))
    except BaseException:
        dist.destroy_process_group()  # no barrier: the other ranks may never reach it
        raise
    shutdown_process_group()  # gc, barrier, destroy: nothing of gloo left for finalisation


def run_in_processes(fn, world_size: int, *args):
    """``[fn(rank, world_size, *args) for each rank]``, each rank in its own process.

    ``fn`` must be importable (module level) and its result picklable by ``torch.save``.
    Raises (via ``torch.multiprocessing``) if any rank fails or exits abnormally.
    """
    with tempfile.TemporaryDirectory() as folder:
        mp.start_processes(
            _rank_main,
            args=(world_size, folder, fn, args),
            nprocs=world_size,
            join=True,
            start_method="spawn",
        )
        return [
            torch.load(os.path.join(folder, f"result{r}.pt"), weights_only=False) for r in range(world_size)
        ]
