"""Let torch >= 2.6's ``weights_only`` loader read mmengine 0.10.7 checkpoints.

mmengine's ``CheckpointLoader`` calls ``torch.load`` without ``weights_only``; since torch 2.6
that means ``weights_only=True``, which refuses the numpy arrays and ``HistoryBuffer`` objects
in the ``message_hub`` that mmengine itself saves, so ``resume`` and ``load_from`` fail. We
allow exactly those globals instead of turning the safe loader off. ``getattr`` is among them
because ``HistoryBuffer`` pickles its statistics methods as ``getattr(HistoryBuffer, name)``;
the safe unpickler still calls only allow-listed callables, so this adds attribute look-ups
on allow-listed objects and no code execution.
"""

import numpy as np
import torch


def _numpy_globals():
    """numpy objects pickled inside mmengine's message hub and metadata."""
    try:  # numpy >= 2 moved the private module
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:
        from numpy.core.multiarray import _reconstruct, scalar
    dtype_classes = [
        type(np.dtype(t))
        for t in ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool")
    ]
    return [_reconstruct, scalar, np.ndarray, np.dtype, *dtype_classes]


def allow_mmengine_checkpoint_globals() -> None:
    """Add mmengine's checkpoint types to torch's safe-globals list (idempotent)."""
    if not hasattr(torch.serialization, "add_safe_globals"):  # torch < 2.4: nothing to do
        return
    from mmengine.logging.history_buffer import HistoryBuffer

    torch.serialization.add_safe_globals([HistoryBuffer, getattr, *_numpy_globals()])
