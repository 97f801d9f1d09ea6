#!/usr/bin/env python
"""Evaluate an mmseg checkpoint (mmseg's tools/test.py), e.g. on the off-domain split:

    tools/seg_test.py configs/mmseg/demo/fcn_r18_mtl.py CHECKPOINT \\
        --cfg-options test_dataloader.dataset.data_prefix.img_path=leftImg8bit/val_shifted \\
                      test_dataloader.dataset.data_prefix.seg_map_path=gtFine/val_shifted
"""

import argparse
import json
import os

from mmengine.config import DictAction
from mmengine.runner import Runner

from conf_plugins.cli import run_main
from conf_plugins.distributed import shutdown_process_group
from conf_plugins.mmseg.checkpoints import require_complete_checkpoint
from conf_plugins.mmseg.config import load_config
from conf_plugins.mmseg.distributed import init_cpu_distributed_if_needed


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Test a segmentor")
    parser.add_argument("config")
    parser.add_argument("checkpoint")
    parser.add_argument("--work-dir")
    parser.add_argument("--out", help="write the metrics as JSON to this file")
    parser.add_argument(
        "--show-dir",
        help="draw every prediction (the config's visualizer, e.g. "
        "ConfidenceSegVisualizer: image | prediction | errors | confidence) here",
    )
    parser.add_argument("--cfg-options", nargs="+", action=DictAction)
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options, args.work_dir, args.launcher)
    if not os.path.isfile(args.checkpoint):
        raise FileNotFoundError(f"checkpoint not found: {args.checkpoint}")
    cfg.load_from = args.checkpoint
    if args.show_dir:  # as mmseg's tools/test.py --show-dir
        cfg.default_hooks.visualization.update(draw=True, interval=1)
        cfg.visualizer["save_dir"] = args.show_dir
    init_cpu_distributed_if_needed(cfg)
    runner = Runner.from_cfg(cfg)
    require_complete_checkpoint(runner.model, args.checkpoint)  # load_from is non-strict
    metrics = runner.test()
    del runner
    if args.out:  # machine-readable copy of what mmengine logged
        from mmengine.dist import is_main_process

        if is_main_process():
            with open(args.out, "w") as f:
                json.dump({k: float(v) for k, v in metrics.items()}, f, indent=1)
    shutdown_process_group()  # the runner is unreachable now: freed before the groups go
    return metrics


if __name__ == "__main__":
    print(run_main(main))
