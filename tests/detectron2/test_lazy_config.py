"""configs/lazy/teacher_r18_demo.py through tools/lazy_train_net.py: a detectron2 LazyConfig
naming our ROI heads, box head and evaluator trains, checkpoints and evaluates; evaluating
the checkpoint again gives the numbers of the evaluation at the end of training."""

import json
import os
import subprocess
import sys

from tests.fixtures import ROOT

TINY = [
    "train.max_iter=2",
    "dataloader.train.total_batch_size=2",
    "model.roi_heads.box_predictor.test_score_thresh=0.0",
]


def lazy_train_net(tmp_path, *args):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "lazy_train_net.py"), *args],
        cwd=tmp_path,
        env={**os.environ, "DETECTRON2_DATASETS": str(tmp_path / "datasets")},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_lazy_config_trains_and_evaluates_with_our_components(tmp_path):
    config = os.path.join(ROOT, "configs", "lazy", "teacher_r18_demo.py")
    out = tmp_path / "lazy"
    trained = lazy_train_net(tmp_path, "--config-file", config, *TINY, f"train.output_dir={out}")
    assert trained.returncode == 0, trained.stderr[-3000:]
    after_training = json.loads((out / "eval_results.json").read_text())
    assert "ProbabilityROIHeads" in (out / "config.yaml").read_text()
    assert {"AP"} <= set(after_training["bbox"]) and "LaECE@IoU0.5" in after_training["calibration"]
    again = lazy_train_net(
        tmp_path,
        "--config-file",
        config,
        "--eval-only",
        *TINY,
        f"train.output_dir={tmp_path / 'eval'}",
        f"train.init_checkpoint={out / 'model_final.pth'}",
    )
    assert again.returncode == 0, again.stderr[-3000:]
    evaluated = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    assert evaluated["calibration"]["count@IoU0.5"] == after_training["calibration"]["count@IoU0.5"]
    assert evaluated["calibration"]["ECE@IoU0.5"] == after_training["calibration"]["ECE@IoU0.5"]
    missing = lazy_train_net(tmp_path, "--config-file", str(tmp_path / "absent.py"))
    assert missing.returncode == 1 and "error: --config-file: no such LazyConfig" in missing.stderr
