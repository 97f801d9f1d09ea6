"""Your own data from one `data` dict: every dataloader follows it, in the
Cityscapes layout and mmseg's generic BaseSegDataset layout, through our tools' config path."""

import os

import numpy as np
import pytest
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from PIL import Image

import conf_plugins.mmseg  # noqa: F401
from conf_plugins.mmseg import generate_demo_segmentation
from conf_plugins.mmseg.data_settings import apply_data_settings
from tests.fixtures import ROOT, load_tool

OWN = os.path.join(ROOT, "configs", "mmseg", "own_data")


def test_cityscapes_layout_from_one_option(tmp_path, monkeypatch):
    root = tmp_path / "demo"
    generate_demo_segmentation(str(root), num_images={"train": 2, "calib": 1, "val": 1})
    monkeypatch.chdir(tmp_path)
    args = load_tool("seg_train").parse_args(
        [
            os.path.join(OWN, "fcn_r18_mtl_cityscapes_layout.py"),
            "--cfg-options",
            f"data.data_root={root}",
            "data.splits.train=train",
            "data.splits.calib=calib",
        ]
    )
    cfg = load_tool("seg_train").build_config(args)
    init_default_scope("mmseg")
    sizes = {}
    for key in ("train_dataloader", "calib_dataloader", "val_dataloader", "test_dataloader"):
        dataset = cfg[key].dataset
        assert dataset.type == "CityscapesDataset" and dataset.data_root == str(root), key
        sizes[key] = len(Runner.build_dataloader(cfg[key]).dataset)
    assert sizes == {"train_dataloader": 2, "calib_dataloader": 1, "val_dataloader": 1, "test_dataloader": 1}
    assert cfg.train_dataloader.dataset.pipeline[0].type == "LoadImageFromFile"  # kept


def test_generic_layout(tmp_path):
    for split, n in (("train", 3), ("calib", 1), ("val", 2)):
        for kind in ("images", "annotations"):
            (tmp_path / kind / split).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "images" / split / f"{i}.jpg")
            Image.fromarray(np.ones((16, 16), np.uint8)).save(tmp_path / "annotations" / split / f"{i}.png")
    cfg = Config.fromfile(os.path.join(OWN, "fcn_r18_mtl_generic_layout.py"))
    cfg.merge_from_dict({"data.data_root": str(tmp_path)})
    apply_data_settings(cfg)
    init_default_scope("mmseg")
    loader = Runner.build_dataloader(cfg.calib_dataloader)
    assert len(loader.dataset) == 1 and loader.dataset.metainfo["classes"] == ("background", "object")
    batch = next(iter(loader))
    assert batch["data_samples"][0].gt_sem_seg.data.unique().tolist() == [1]
    assert len(Runner.build_dataloader(cfg.test_dataloader).dataset) == 2  # test = val
    assert cfg.model.decode_head.num_classes == 2


@pytest.mark.parametrize(
    "data, message",
    [
        (dict(type="X"), "non-empty 'splits'"),
        (dict(splits=dict(holdout="h")), "unknown splits"),
    ],
)
def test_bad_data_settings_are_refused(data, message):
    cfg = Config(dict(data=data, train_dataloader=dict(dataset=dict())))
    with pytest.raises(ValueError, match=message):
        apply_data_settings(cfg)
