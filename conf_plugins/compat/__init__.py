"""Every compatibility shim of conf_plugins, in one place.

The stack is official detectron2 (main, built from source), mmcv 2.1.0, mmengine 0.10.7 and
mmsegmentation 1.2.2 on a current torch. One mismatch needs handling, explicitly, documented
and tested (tests/compat/):

**torch >= 2.6 loads checkpoints with ``weights_only=True``.** mmengine 0.10.7's checkpoints
(``resume``, ``load_from``) hold a message hub with numpy arrays and mmengine's
``HistoryBuffer``; :func:`allow_mmengine_checkpoint_globals` adds exactly those types to
torch's safe-globals allow-list (nothing else changes; no code is unpickled beyond that
list). Called when ``conf_plugins.mmseg`` is imported.
"""

from .torch_load import allow_mmengine_checkpoint_globals

__all__ = ["allow_mmengine_checkpoint_globals"]
