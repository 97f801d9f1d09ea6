"""The compatibility shims of conf_plugins.compat, against the real installed packages."""
import subprocess
import sys

import pytest
import torch

from conf_plugins.compat import (check_pillow_for_detectron2,
                                 detectron2_compiled_ops_available)


def test_placeholder_names_the_missing_op():
    from detectron2 import _C

    if detectron2_compiled_ops_available():
        pytest.skip("official detectron2 with compiled ops is installed")
    assert not hasattr(_C, "box_iou_rotated")
    from detectron2.layers.rotated_boxes import pairwise_iou_rotated

    boxes = torch.tensor([[10.0, 10.0, 4.0, 4.0, 0.0]])
    with pytest.raises(RuntimeError, match="rotated boxes"):
        pairwise_iou_rotated(boxes, boxes)


def test_detectron2_collect_env_runs():
    from detectron2.utils.collect_env import collect_env_info

    info = collect_env_info()
    assert "detectron2" in info and "PyTorch" in info


def test_pillow_supports_this_detectron2():
    check_pillow_for_detectron2()  # raises with a clear message where it would break
    import detectron2.data.transforms  # noqa: F401  (reads Image.LINEAR at import)


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
    result = subprocess.run([sys.executable, "-c", _SAVE_AND_LOAD, str(tmp_path / "c.pth"), mode],
                            capture_output=True, text=True)
    if mode == "allow":
        assert result.returncode == 0 and "loaded" in result.stdout, result.stderr
    else:  # proves the shim is needed on this torch (weights_only is the default since 2.6)
        assert result.returncode != 0 and "weights_only" in result.stderr
