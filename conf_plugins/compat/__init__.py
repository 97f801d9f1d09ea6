"""Every compatibility shim of conf_plugins, in one place.

The real stack here is detectron2 v0.6 (or current main), mmcv 2.1.0, mmengine 0.10.7,
mmsegmentation 1.2.2 on a current torch. Three mismatches need handling; each is explicit,
documented and tested (tests/compat/):

1. **detectron2 compiled ops.** Where detectron2 comes from its pure-Python PyPI copy, its
   ``detectron2._C`` is :mod:`~conf_plugins.compat.detectron2_ops_placeholder` (installed by
   ``tools/env/detectron2_wheel.py``): version queries answer, any compiled op raises an
   error naming it. :func:`detectron2_compiled_ops_available` tells which one is installed.
2. **Pillow >= 10 removed ``Image.LINEAR``**, which detectron2 v0.6 reads at import. We pin
   ``pillow<10`` (requirements/pins.txt) rather than patching Pillow;
   :func:`check_pillow_for_detectron2` turns the otherwise cryptic import failure into a
   clear error.
3. **torch >= 2.6 loads checkpoints with ``weights_only=True``.** mmengine 0.10.7's
   checkpoints (``resume``, ``load_from``) hold a message hub with numpy arrays and
   mmengine's ``HistoryBuffer``; :func:`allow_mmengine_checkpoint_globals` adds exactly those
   types to torch's safe-globals allow-list (nothing else changes; no code is unpickled
   beyond that list). Called when ``conf_plugins.mmseg`` is imported.
"""
import importlib.util

from .torch_load import allow_mmengine_checkpoint_globals

__all__ = [
    "allow_mmengine_checkpoint_globals",
    "check_pillow_for_detectron2",
    "detectron2_compiled_ops_available",
]


def detectron2_compiled_ops_available() -> bool:
    """True for a detectron2 with its real compiled ``_C``, False for the placeholder."""
    if importlib.util.find_spec("detectron2") is None:
        raise ImportError("detectron2 is not installed (see README: 'Set-up').")
    from detectron2 import _C

    return not getattr(_C, "IS_PLACEHOLDER", False)


def check_pillow_for_detectron2() -> None:
    """Raise a clear error when this detectron2 needs ``Image.LINEAR`` and Pillow lacks it."""
    from PIL import Image, __version__ as pillow_version

    if hasattr(Image, "LINEAR"):
        return
    import detectron2

    if detectron2.__version__.startswith("0.6"):
        raise ImportError(
            f"detectron2 {detectron2.__version__} uses PIL.Image.LINEAR, removed in Pillow 10; "
            f"installed Pillow is {pillow_version}. Install pillow<10 (requirements/pins.txt "
            "pins 9.5.0) or a detectron2 built from current source.")
