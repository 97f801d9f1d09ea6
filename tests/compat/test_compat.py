"""The compatibility shims of conf_plugins.compat, against the real installed packages."""

import subprocess
import sys

import pytest
import torch


def test_detectron2_compiled_ops_are_real():
    """Official detectron2 built from source: rotated-box IoU runs in its compiled _C."""
    from detectron2 import _C
    from detectron2.layers.rotated_boxes import pairwise_iou_rotated

    assert _C.__file__.endswith(".so"), _C.__file__
    boxes = torch.tensor([[10.0, 10.0, 4.0, 4.0, 0.0], [12.0, 10.0, 4.0, 4.0, 0.0]])
    iou = pairwise_iou_rotated(boxes, boxes)
    assert iou[0, 1].item() == pytest.approx(8.0 / 24.0, rel=1e-5)


def test_detectron2_collect_env_runs():
    from detectron2.utils.collect_env import collect_env_info

    info = collect_env_info()
    assert "detectron2" in info and "PyTorch" in info


_SAVE_AND_LOAD = """
import sys, numpy as np, torch
from mmengine.logging import HistoryBuffer
from mmengine.runner import CheckpointLoader
path = sys.argv[1]
buffer = HistoryBuffer()
buffer.update(1.0)
buffer.update(2.0)
torch.save({"state_dict": {"w": torch.ones(2)},
            "message_hub": {"log_scalars": {"loss": buffer},
                            "runtime_info": {"iter": np.int64(3), "arr": np.zeros(2)}}}, path)
if sys.argv[2] == "allow":
    from conf_plugins.compat import allow_mmengine_checkpoint_globals
    allow_mmengine_checkpoint_globals()
ckpt = CheckpointLoader.load_checkpoint(path, map_location="cpu")
assert ckpt["message_hub"]["log_scalars"]["loss"].mean() == 1.5
print("loaded")
"""


@pytest.mark.parametrize("mode", ["allow", "stock"])
def test_mmengine_checkpoint_loads_under_weights_only(tmp_path, mode):
    result = subprocess.run(
        [sys.executable, "-c", _SAVE_AND_LOAD, str(tmp_path / "c.pth"), mode], capture_output=True, text=True
    )
    if mode == "allow":
        assert result.returncode == 0 and "loaded" in result.stdout, result.stderr
    else:  # proves the shim is needed on this torch (weights_only is the default since 2.6)
        assert result.returncode != 0 and "weights_only" in result.stderr
