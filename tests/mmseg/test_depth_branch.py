"""The optional depth branch (Kendall et al.'s three-task case) with the real mmseg on CPU:
masked L1, three uncertainty-weighted tasks, the demo depth maps and the demo depth config."""

import copy
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.optim import OptimWrapper
from mmengine.structures import PixelData
from mmseg.registry import DATASETS, MODELS
from mmseg.utils import register_all_modules

import conf_plugins.mmseg  # noqa: F401  (registers our components)
from conf_plugins.mmseg import generate_demo_segmentation
from tests.fixtures import mmseg_batch, tiny_mmseg_model_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPTH_CFG = os.path.join(ROOT, "configs", "mmseg", "demo", "fcn_r18_mtl_depth.py")
THREE_TASKS = dict(
    type="UncertaintyWeightedLoss",
    task_names=["seg", "success", "depth"],
    task_types=["classification", "classification", "regression"],
)
NUM_CLASSES = 4


def depth_model_cfg(weighting=True, **head_kwargs):
    cfg = tiny_mmseg_model_cfg(num_classes=NUM_CLASSES)
    cfg.type = "SuccessEncoderDecoder"
    cfg.decode_head.type = "FCNSuccessHead"
    cfg.decode_head.depth_branch = True
    if weighting:
        cfg.decode_head.task_weighting = copy.deepcopy(THREE_TASKS)
    cfg.decode_head.update(head_kwargs)
    return cfg


def depth_batch(seed=0, invalid_fraction=0.3, **kwargs):
    """``mmseg_batch`` plus a gt_depth_map per sample (metres, some pixels invalid)."""
    batch = mmseg_batch(seed=seed, num_classes=NUM_CLASSES, **kwargs)
    g = torch.Generator().manual_seed(seed + 100)
    for sample in batch["data_samples"]:
        depth = 1 + 50 * torch.rand(sample.gt_sem_seg.shape, generator=g)
        depth[torch.rand(depth.shape, generator=g) < invalid_fraction] = 0.0
        sample.gt_depth_map = PixelData(data=depth[None])
    return batch


def test_loss_is_the_l1_over_valid_pixels_only():
    register_all_modules()
    head = MODELS.build(depth_model_cfg(weighting=False, depth_loss_weight=0.5)).decode_head
    size = 8
    samples = mmseg_batch(num_images=2, size=size, num_classes=NUM_CLASSES)["data_samples"]
    gt = torch.full((2, 1, size, size), 10.0)
    gt[0, 0, 0, :4] = torch.tensor([0.0, -3.0, float("nan"), float("inf")])  # all invalid
    gt[1, 0, 5, 5] = 2.0
    samples[1].set_metainfo(dict(padding_size=[0, 2, 0, 1]))  # last 2 columns, last row
    gt[1, 0, -1, :] = gt[1, 0, :, -2:] = 255.0  # seg_pad_val in the padding: not a depth
    for sample, depth in zip(samples, gt):
        sample.gt_depth_map = PixelData(data=depth)
    packed = torch.randn(2, NUM_CLASSES + 3, size, size)  # label resolution: no resize
    losses = head.loss_by_feat(packed, samples)

    pred = packed[:, NUM_CLASSES + 2 :]
    valid = torch.ones_like(gt, dtype=torch.bool)
    valid[0, 0, 0, :4] = False
    valid[1, 0, -1, :] = valid[1, 0, :, -2:] = False
    expected = 0.5 * (pred[valid] - gt[valid]).abs().sum() / valid.sum()
    assert valid.sum() == 2 * 64 - 4 - (8 + 2 * 7)
    assert torch.allclose(losses["loss_depth"], expected)
    assert {"loss_ce", "loss_success", "loss_depth", "acc_success"} <= set(losses)


def test_prediction_resized_bilinearly_to_label_resolution():
    head = MODELS.build(depth_model_cfg(weighting=False)).decode_head
    samples = depth_batch(invalid_fraction=0.0, size=16)["data_samples"]
    packed = torch.randn(2, NUM_CLASSES + 3, 4, 4)
    gt = torch.stack([s.gt_depth_map.data for s in samples])
    pred = torch.nn.functional.interpolate(
        packed[:, -1:], size=(16, 16), mode="bilinear", align_corners=False
    )
    losses = head.loss_by_feat(packed, samples)
    assert torch.allclose(losses["loss_depth"], (pred - gt).abs().mean())


def test_train_step_logs_and_updates_three_sigmas():
    model = MODELS.build(depth_model_cfg())
    weighting = model.decode_head.task_weighting
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01))
    before = weighting.sigmas()
    depth_weight = model.decode_head.depth_branch[1].weight.detach().clone()
    log_vars = model.train_step(depth_batch(), optim)
    for task in ("seg", "success", "depth"):
        for key in ("loss", "raw", "sigma"):
            assert f"decode.{key}_{task}" in log_vars, (key, task)
    summed = sum(log_vars[f"decode.loss_{t}"] for t in ("seg", "success", "depth"))
    assert torch.allclose(log_vars["loss"], summed)  # raw terms are logged, never summed
    s = torch.tensor(0.0)  # regression form at init (s = 0): 1/2 exp(-s) L + s/2 = L / 2
    assert torch.allclose(
        log_vars["decode.loss_depth"], 0.5 * torch.exp(-s) * log_vars["decode.raw_depth"] + s / 2
    )
    after = weighting.sigmas()
    assert all(after[t] != before[t] for t in ("seg", "success", "depth"))
    assert not torch.equal(model.decode_head.depth_branch[1].weight, depth_weight)  # trained


def test_inference_is_unchanged_by_the_depth_branch():
    model = MODELS.build(depth_model_cfg()).eval()
    with torch.no_grad():
        samples = model.test_step(depth_batch())
    for s in samples:  # C seg logits (the success channel is split off by the segmentor)
        assert s.seg_logits.data.shape == (NUM_CLASSES, 64, 64)
        assert s.success_score.data.shape == (1, 64, 64)
    head = model.decode_head
    assert head.cls_seg(torch.randn(1, head.channels, 4, 4)).shape[1] == NUM_CLASSES + 3


def test_all_invalid_or_missing_depth_and_wrong_tasks_are_clear_errors():
    model = MODELS.build(depth_model_cfg())
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01))
    with pytest.raises(ValueError, match="no valid depth pixel"):
        model.train_step(depth_batch(invalid_fraction=1.1), optim)
    with pytest.raises(ValueError, match="gt_depth_map"):
        model.train_step(mmseg_batch(num_classes=NUM_CLASSES), optim)
    two_tasks = dict(
        type="UncertaintyWeightedLoss",
        task_names=["seg", "success"],
        task_types=["classification", "classification"],
    )
    with pytest.raises(ValueError, match="depth"):
        MODELS.build(depth_model_cfg(task_weighting=two_tasks))
    cfg = depth_model_cfg(depth_branch=False)
    with pytest.raises(ValueError, match="task_weighting"):
        MODELS.build(cfg)


def test_demo_depth_maps(tmp_path):
    root = str(tmp_path / "demo")
    generate_demo_segmentation(root, num_images={"train": 3, "val": 2, "val_shifted": 2})
    depth = _read(f"{root}/depth/train/demo/demo_00000_depth.png")  # as LoadDepthAnnotation
    label = _read(f"{root}/gtFine/train/demo/demo_00000_gtFine_labelTrainIds.png")
    assert depth.dtype == np.uint16 and depth.shape == label.shape
    assert (depth[label == 3] == 0).all() and (depth[label == 0] > 0).all()  # sky invalid
    road_column = [d for d, lab in zip(depth[:, 0], label[:, 0]) if lab == 0]
    assert road_column == sorted(road_column, reverse=True)  # nearer towards the bottom
    # val_shifted: the same scenes, hence the same depth
    assert np.array_equal(
        _read(f"{root}/depth/val/demo/demo_00001_depth.png"),
        _read(f"{root}/depth/val_shifted/demo/demo_00001_depth.png"),
    )
    # a dataset written before depth maps existed gets them, and nothing else changes
    before = {p: os.path.getmtime(p) for p in _files(root) if "/depth/" not in p}
    reference = open(f"{root}/depth/train/demo/demo_00002_depth.png", "rb").read()
    shutil.rmtree(f"{root}/depth")
    generate_demo_segmentation(root)
    assert open(f"{root}/depth/train/demo/demo_00002_depth.png", "rb").read() == reference
    assert {p: os.path.getmtime(p) for p in _files(root) if "/depth/" not in p} == before


def _read(path):
    return cv2.imread(path, cv2.IMREAD_UNCHANGED)


def _files(root):
    return [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seg_depth")
    generate_demo_segmentation(
        str(folder / "datasets" / "conf_demo_seg"),
        num_images={"train": 4, "calib": 2, "val": 2, "val_shifted": 2},
    )
    return folder


def test_demo_depth_config_loads_depth(workdir, monkeypatch):
    register_all_modules()
    monkeypatch.chdir(workdir)
    cfg = Config.fromfile(DEPTH_CFG)
    assert cfg.model.decode_head.depth_branch
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    sample = dataset[0]["data_samples"]
    assert sample.gt_depth_map.shape == sample.gt_sem_seg.shape == (128, 256)
    depth = sample.gt_depth_map.data
    assert depth.dtype == torch.float32 and 0 < depth.max() <= 60.001  # metres
    assert ((depth == 0) == (sample.gt_sem_seg.data == 3)).float().mean() > 0.9  # sky (+ borders)


def test_demo_depth_config_trains_two_iterations(workdir):
    out = str(workdir / "mtl_depth")
    args = [
        "train_dataloader.batch_size=2",
        "default_hooks.logger.interval=1",
        "train_cfg.val_interval=1000",
        "default_hooks.checkpoint.interval=2",
        "train_cfg.max_iters=2",
        "param_scheduler.0.end=2",
        "custom_hooks.0.snapshot_iter=1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tools", "seg_train.py"),
            DEPTH_CFG,
            "--work-dir",
            out,
            "--cfg-options",
            *args,
        ],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-4000:])
    log = open(next((workdir / "mtl_depth").rglob("*.log"))).read()
    for key in (
        "decode.loss_depth",
        "decode.raw_depth",
        "decode.sigma_depth",
        "decode.sigma_seg",
        "decode.sigma_success",
    ):
        assert key in log, key
    state = torch.load(f"{out}/iter_2.pth", map_location="cpu", weights_only=False)["state_dict"]
    assert "decode_head.task_weighting.log_vars.depth" in state
