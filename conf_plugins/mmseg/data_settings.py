"""One ``data`` dict in a config (or one ``--cfg-options data.data_root=...``) sets the dataset
of every dataloader: type, root and splits of your own data without rewriting four loaders.

    data = dict(type='CityscapesDataset', data_root='data/cityscapes',
                img_dir='leftImg8bit', seg_map_dir='gtFine',
                splits=dict(train='train', calib=dict(ann_file='splits/train_calib.txt',
                                                      folder='train'), val='val'))

Each split is a folder name under ``img_dir`` / ``seg_map_dir`` (``data_prefix`` of the
dataset), or a dict of dataset arguments (``folder`` gives the prefix, the rest, e.g.
``ann_file``, is passed on). Every other key of ``data`` (``type``, ``data_root``,
``img_suffix``, ``metainfo``, ...) goes to every split's dataset. ``test`` defaults to
``val``. Our tools (seg_train, seg_test, fit_calibration) apply it after ``--cfg-options``.
"""

import copy

LOADERS = {
    "train": "train_dataloader",
    "calib": "calib_dataloader",
    "val": "val_dataloader",
    "test": "test_dataloader",
}
LAYOUT_KEYS = ("img_dir", "seg_map_dir", "splits")


def apply_data_settings(cfg):
    """Expand ``cfg.data`` (if any) into the ``dataset`` of each dataloader; returns cfg."""
    data = cfg.get("data")
    if data is None:
        return cfg
    if not isinstance(data, dict) or not isinstance(data.get("splits"), dict) or not data["splits"]:
        raise ValueError(
            "data must be a dict with a non-empty 'splits' dict (see conf_plugins.mmseg.data_settings)"
        )
    unknown = set(data["splits"]) - set(LOADERS)
    if unknown:
        raise ValueError(f"data.splits: unknown splits {sorted(unknown)}; use {sorted(LOADERS)}")
    splits = dict(data["splits"])
    if "val" in splits:
        splits.setdefault("test", splits["val"])
    common = {k: copy.deepcopy(v) for k, v in data.items() if k not in LAYOUT_KEYS}
    img_dir, seg_dir = data.get("img_dir", "img_dir"), data.get("seg_map_dir", "ann_dir")
    for split, setting in splits.items():
        key = LOADERS[split]
        if cfg.get(key) is None:
            raise ValueError(f"data.splits.{split}: the config has no {key} to apply it to")
        setting = dict(folder=setting) if isinstance(setting, str) else dict(setting)
        folder = setting.pop("folder", None)
        loader = copy.deepcopy(cfg[key])  # test_dataloader may be the same object as val's
        loader["dataset"].update(common, **setting)
        if folder is not None:
            loader["dataset"]["data_prefix"] = dict(
                img_path=f"{img_dir}/{folder}", seg_map_path=f"{seg_dir}/{folder}"
            )
        cfg[key] = loader
    return cfg
