#!/usr/bin/env python
"""Train an mmseg model with conf_plugins' components (mmseg's tools/train.py, plus CPU gloo).

tools/seg_train.py configs/mmseg/demo/fcn_r18_mtl.py
torchrun --nproc_per_node 8 tools/seg_train.py CONFIG --launcher pytorch      # GPUs
torchrun --nproc_per_node 2 tools/seg_train.py CONFIG --launcher pytorch      # CPU, gloo
"""

import argparse

from mmengine.config import Config, DictAction
from mmengine.runner import Runner

from conf_plugins.cli import run_main
from conf_plugins.distributed import shutdown_process_group
from conf_plugins.mmseg.config import load_config
from conf_plugins.mmseg.distributed import init_cpu_distributed_if_needed


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Train a segmentor")
    parser.add_argument("config", help="train config file path")
    parser.add_argument("--work-dir", help="the dir to save logs and models")
    parser.add_argument("--resume", action="store_true", help="resume from the latest checkpoint")
    parser.add_argument(
        "--cfg-options", nargs="+", action=DictAction, help="override settings of the config, key=value"
    )
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)
    return parser.parse_args(argv)


def build_config(args) -> Config:
    cfg = load_config(args.config, args.cfg_options, args.work_dir, args.launcher)
    cfg.resume = args.resume
    return cfg


def main(argv=None):
    args = parse_args(argv)
    cfg = build_config(args)
    init_cpu_distributed_if_needed(cfg)
    Runner.from_cfg(cfg).train()
    shutdown_process_group()  # the runner is unreachable now: freed before the groups go


if __name__ == "__main__":
    run_main(main)
