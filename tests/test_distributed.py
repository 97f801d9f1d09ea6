"""conf_plugins.distributed.shutdown_process_group frees what a finished run left behind.

The abort it prevents happens only at interpreter exit and rarely; what can be tested is its
premise: a finished mmengine Runner (with its model) is garbage held in reference cycles,
which ``shutdown_process_group`` collects while the interpreter is alive."""

import gc
import os
import weakref

from conf_plugins.distributed import shutdown_process_group
from conf_plugins.mmseg import generate_demo_segmentation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train_one_iteration(work_dir):
    from mmengine.config import Config
    from mmengine.runner import Runner

    cfg = Config.fromfile(os.path.join(ROOT, "configs", "mmseg", "demo", "fcn_r18_stl.py"))
    cfg.merge_from_dict(
        {
            "train_cfg.max_iters": 1,
            "param_scheduler.0.end": 1,
            "train_dataloader.batch_size": 2,
            "train_cfg.val_interval": 1000,
            "default_hooks.checkpoint.interval": 1000,
            "work_dir": str(work_dir),
        }
    )
    runner = Runner.from_cfg(cfg)
    runner.train()
    return weakref.ref(runner), weakref.ref(runner.model)


def test_a_finished_runner_is_freed_by_shutdown(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    generate_demo_segmentation("datasets/conf_demo_seg", {"train": 2, "calib": 1, "val": 1, "val_shifted": 1})
    gc.disable()  # only shutdown_process_group may collect
    try:
        runner, model = _train_one_iteration(tmp_path / "work")
        assert runner() is not None and model() is not None  # kept alive by cycles
        shutdown_process_group()
        assert runner() is None and model() is None
    finally:
        gc.enable()
