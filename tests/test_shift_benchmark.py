"""tools/shift_benchmark.py on real detectron2 and mmseg models: a clean cell and corrupted
cells with every metric, corrupted cells differ from the clean one, the outputs (JSON, table,
plots) exist, an existing result is not overwritten, and bad grids are clear errors."""

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.fixtures import ROOT

TOOL = os.path.join(ROOT, "tools", "shift_benchmark.py")


def run(args, cwd):
    result = subprocess.run(
        [sys.executable, TOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=900
    )
    return result


def test_detectron2_grid(tmp_path, monkeypatch):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from conf_plugins.detectron2 import generate_demo_detection
    from conf_plugins.detectron2.engine import argument_parser, setup

    generate_demo_detection(str(tmp_path / "datasets" / "conf_demo_det"), {"train": 1, "calib": 1, "val": 3})
    opts = [
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
        "0.0",
        "INPUT.MIN_SIZE_TEST",
        "64",
        "INPUT.MAX_SIZE_TEST",
        "64",
    ]
    monkeypatch.chdir(tmp_path)
    cfg = setup(
        argument_parser().parse_args(
            ["--config-file", os.path.join(ROOT, "configs/demo/teacher.yaml"), *opts]
        )
    )
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(cfg), save_dir=str(tmp_path)).save("random")
    out = tmp_path / "shift"
    result = run(
        [
            os.path.join(ROOT, "configs/demo/teacher.yaml"),
            str(tmp_path / "random.pth"),
            "--corruptions",
            "gaussian_noise",
            "--severities",
            "5",
            "--output",
            str(out),
            *opts,
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    shift = json.loads((out / "shift.json").read_text())
    assert [(r["corruption"], r["severity"]) for r in shift["rows"]] == [("none", 0), ("gaussian_noise", 5)]
    clean, noisy = (r["metrics"] for r in shift["rows"])
    assert clean["calibration/count@IoU0.5"] > 0 and "bbox/AP" in clean
    assert clean["calibration/ECE@IoU0.5"] != noisy["calibration/ECE@IoU0.5"]
    assert (out / "calibration_ECE_IoU0.5.png").exists() and "| gaussian_noise | 5 |" in (
        out / "shift.md"
    ).read_text()
    again = run(
        [
            os.path.join(ROOT, "configs/demo/teacher.yaml"),
            str(tmp_path / "random.pth"),
            "--corruptions",
            "gaussian_noise",
            "--output",
            str(out),
        ],
        tmp_path,
    )
    assert again.returncode == 1 and "exists; pass --force" in again.stderr


def test_mmseg_grid(tmp_path, monkeypatch):
    from mmengine.runner import Runner

    from conf_plugins.mmseg import generate_demo_segmentation
    from conf_plugins.mmseg.config import load_config

    generate_demo_segmentation(
        str(tmp_path / "datasets" / "conf_demo_seg"), {"train": 1, "calib": 1, "val": 2, "val_shifted": 1}
    )
    config = os.path.join(ROOT, "configs/mmseg/demo/fcn_r18_stl.py")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(config, None, str(tmp_path / "work"))
    runner = Runner.from_cfg(cfg)
    torch.save({"state_dict": runner.model.state_dict(), "meta": {}}, tmp_path / "random.pth")
    del runner
    out = tmp_path / "shift"
    result = run(
        [
            config,
            str(tmp_path / "random.pth"),
            "--corruptions",
            "fog,contrast",
            "--severities",
            "5",
            "--output",
            str(out),
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((out / "shift.json").read_text())["rows"]
    assert [(r["corruption"], r["severity"]) for r in rows] == [("none", 0), ("fog", 5), ("contrast", 5)]
    assert len({r["metrics"]["calib/ECE"] for r in rows}) == 3
    assert (out / "calib_ECE.png").exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--corruptions", "rain"], "unknown corruption 'rain'"),
        (["--severities", "0"], "severities must lie in 1-5"),
    ],
)
def test_bad_grid_arguments(tmp_path, args, message):
    result = run(
        [os.path.join(ROOT, "configs/demo/teacher.yaml"), "x.pth", "--output", str(tmp_path), *args], tmp_path
    )
    assert result.returncode != 0 and message in result.stderr
