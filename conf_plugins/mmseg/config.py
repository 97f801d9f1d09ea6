"""An mmseg config as our tools load it (mmseg's tools/train.py and tools/test.py, plus our
``data`` settings), for ``tools/seg_train.py``, ``tools/seg_test.py`` and
``tools/fit_calibration.py`` alike."""

import os

from mmengine.config import Config
from mmengine.registry import init_default_scope

from .data_settings import apply_data_settings


def default_work_dir(config_path: str) -> str:
    """``output/<config name>``: where a run without ``work_dir`` writes (mmseg's default is
    ``./work_dirs/<config name>``)."""
    return os.path.join("output", os.path.splitext(os.path.basename(config_path))[0])


def load_config(path: str, cfg_options=None, work_dir=None, launcher=None) -> Config:
    """The config at ``path`` (``_base_`` files, ``custom_imports``) with, in this order:
    ``launcher`` set (``--launcher``), ``cfg_options`` merged (``--cfg-options``, a dict),
    the ``data = dict(type, data_root, splits)`` settings expanded into the dataloaders
    (:func:`~conf_plugins.mmseg.data_settings.apply_data_settings`), ``work_dir`` set
    (``--work-dir``; else the config's; else :func:`default_work_dir`), and the config's
    default scope (mmseg unless it names another) made current, so that registries build
    its components without a ``Runner``."""
    cfg = Config.fromfile(path)
    if launcher is not None:
        cfg.launcher = launcher
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    apply_data_settings(cfg)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = default_work_dir(path)
    init_default_scope(cfg.get("default_scope", "mmseg"))
    return cfg
