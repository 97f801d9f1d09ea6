"""Every mmseg config of ours parses on the real mmengine; the Cityscapes recipes keep the
calibration split out of training and evaluation; tools/split_holdout.py."""

import glob
import os

import pytest
from mmengine.config import Config

from tests.fixtures import ROOT, load_tool

CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "mmseg", "**", "*.py"), recursive=True))
RECIPES = [
    c
    for c in CONFIGS
    if "cityscapes" in os.path.basename(c) and os.path.dirname(c) == os.path.join(ROOT, "configs", "mmseg")
]


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_parses(path):
    cfg = Config.fromfile(path)
    if "_base_" not in path:
        assert cfg.model.type and cfg.test_dataloader


@pytest.mark.parametrize("path", RECIPES, ids=os.path.basename)
def test_cityscapes_recipes_fit_calibration_on_held_out_training_images(path):
    fit = load_tool("fit_calibration")
    cfg = Config.fromfile(path)
    calib = cfg.calib_dataloader.dataset
    assert calib.data_prefix.img_path == "leftImg8bit/train"
    assert (calib.ann_file, cfg.train_dataloader.dataset.ann_file) == (
        "splits/train_calib.txt",
        "splits/train_fit.txt",
    )
    fit.held_out_dataloader(cfg, "calib_dataloader", allow_eval_split=False)  # not val: fine
    assert cfg.tta_model.type == "ConfidenceSegTTAModel"
    assert cfg.visualizer.type == "ConfidenceSegVisualizer"


def test_split_holdout_writes_disjoint_lists(tmp_path):
    folder = tmp_path / "leftImg8bit" / "train" / "city"
    folder.mkdir(parents=True)
    for i in range(10):
        (folder / f"city_{i:02d}_leftImg8bit.png").write_bytes(b"")
    tool = load_tool("split_holdout")
    counts = tool.main([str(tmp_path), "leftImg8bit/train", "--holdout", "3"])
    assert counts == {"train_fit.txt": 7, "train_calib.txt": 3}
    fit = (tmp_path / "splits" / "train_fit.txt").read_text().split()
    calib = (tmp_path / "splits" / "train_calib.txt").read_text().split()
    assert not set(fit) & set(calib) and len(set(fit) | set(calib)) == 10
    assert all(n.startswith("city/city_") and not n.endswith(".png") for n in fit + calib)
    with pytest.raises(FileExistsError, match="exists; pass --force"):
        tool.main([str(tmp_path), "leftImg8bit/train", "--holdout", "3"])
    with pytest.raises(ValueError, match=r"--holdout must be in \[1, 9\]"):
        tool.main([str(tmp_path), "leftImg8bit/train", "--holdout", "10", "--force"])
