"""tools/train_net.py end to end on the demo data: teacher, MC-10 and DDN student, through
detectron2's own trainer, checkpointer and evaluation loop (a few iterations each)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAST = [
    "SOLVER.IMS_PER_BATCH",
    "2",
    "SOLVER.WARMUP_ITERS",
    "1",
    "SOLVER.CHECKPOINT_PERIOD",
    "1000",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
    "0.0",
]


def train_net(tmp_path, *args):
    env = {**os.environ, "DETECTRON2_DATASETS": str(tmp_path / "datasets")}
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def eval_results(folder):
    with open(os.path.join(folder, "eval_results.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("stage", ["all"])
def test_teacher_mc_and_ddn_student_train_and_evaluate(tmp_path, stage):
    teacher_dir, ddn_dir = tmp_path / "teacher", tmp_path / "ddn"
    cfg = os.path.join(ROOT, "configs", "demo")
    train_net(
        tmp_path,
        "--config-file",
        f"{cfg}/teacher.yaml",
        "SOLVER.MAX_ITER",
        "3",
        "OUTPUT_DIR",
        str(teacher_dir),
        "TEST.EVAL_PERIOD",
        "0",
        *FAST,
    )
    weights = str(teacher_dir / "model_final.pth")
    assert os.path.isfile(weights)
    train_net(
        tmp_path,
        "--config-file",
        f"{cfg}/teacher.yaml",
        "--eval-only",
        "MODEL.WEIGHTS",
        weights,
        "MODEL.ROI_HEADS.NAME",
        "MCDropoutROIHeads",
        "OUTPUT_DIR",
        str(tmp_path / "mc"),
        *FAST,
    )
    mc = eval_results(tmp_path / "mc")
    assert "bbox" in mc and "ECE@IoU0.5" in mc["calibration"]
    # detectron2's own launch, 2 CPU processes (gloo): the numbers of 1 process, and both
    # processes exit cleanly (each tears its process group down before exiting).
    baseline = {}
    for procs in (1, 2):
        folder = tmp_path / f"baseline{procs}"
        train_net(
            tmp_path,
            "--config-file",
            f"{cfg}/teacher.yaml",
            "--eval-only",
            "--num-gpus",
            str(procs),
            "--dist-url",
            f"file://{tmp_path}/rendezvous{procs}",
            "MODEL.WEIGHTS",
            weights,
            "OUTPUT_DIR",
            str(folder),
            *FAST,
        )
        baseline[procs] = eval_results(folder)
    assert baseline[2]["bbox"] == pytest.approx(baseline[1]["bbox"], nan_ok=True)
    assert baseline[2]["calibration"] == pytest.approx(baseline[1]["calibration"], nan_ok=True, rel=1e-9)
    train_net(
        tmp_path,
        "--config-file",
        f"{cfg}/ddn.yaml",
        "SOLVER.MAX_ITER",
        "2",
        "MODEL.WEIGHTS",
        weights,
        "MODEL.DDN.TEACHER_WEIGHTS",
        weights,
        "OUTPUT_DIR",
        str(ddn_dir),
        *FAST,
    )
    train_net(
        tmp_path,
        "--config-file",
        f"{cfg}/ddn.yaml",
        "--eval-only",
        "MODEL.WEIGHTS",
        str(ddn_dir / "model_final.pth"),
        "MODEL.DDN.TEACHER_WEIGHTS",
        weights,
        "OUTPUT_DIR",
        str(ddn_dir),
        *FAST,
    )
    ddn = eval_results(ddn_dir)
    assert {"MSCE@IoU0.3", "MCE@IoU0.5", "NLL@IoU0.7"} <= set(ddn["calibration"])
    assert (
        ddn_dir / "inference" / "conf_demo_det_val" / "calibration" / "reliability_iou0.5.png"
    ).stat().st_size > 0
    log = (ddn_dir / "log.txt").read_text()
    assert "loss_distill" in log and "loss_rpn" not in log


@pytest.mark.parametrize("config", ["mask_rcnn.yaml", "retinanet.yaml"])
def test_stock_model_zoo_families_train_and_evaluate_on_the_demo_data(tmp_path, config):
    """detectron2's stock Mask R-CNN (the demo annotations carry instance masks) and RetinaNet,
    shrunk, train with the stock trainer and evaluate with ours (COCO segm too for masks)."""
    out = tmp_path / "run"
    cfg = os.path.join(ROOT, "configs", "demo", config)
    fast = [*FAST, "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"]
    train_net(tmp_path, "--config-file", cfg, "SOLVER.MAX_ITER", "3", "OUTPUT_DIR", str(out), *fast)
    weights = str(out / "model_final.pth")
    train_net(
        tmp_path, "--config-file", cfg, "--eval-only", "MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(out), *fast
    )
    results = eval_results(out)
    assert results["calibration"]["count@IoU0.5"] > 0
    assert ("segm" in results) == (config == "mask_rcnn.yaml") and "bbox" in results


def test_missing_dataset_points_at_demo_configs(tmp_path):
    env = {**os.environ, "DETECTRON2_DATASETS": str(tmp_path / "nothing")}
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tools", "train_net.py"),
            "--config-file",
            os.path.join(ROOT, "configs", "ddn_r50.yaml"),
            "MODEL.DEVICE",
            "cpu",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error: dataset 'coco_2017_train' is not available" in result.stderr
    assert "configs/demo/teacher.yaml" in result.stderr


def test_your_own_coco_data_from_the_command_line(tmp_path):
    """A COCO JSON of the user's, registered by --coco, no code; the demo data is
    not generated when the config does not use it."""
    from conf_plugins.detectron2 import generate_demo_detection

    own = tmp_path / "my_data"
    paths = generate_demo_detection(str(own), {"train": 4, "val": 2}, image_size=64)
    out = tmp_path / "own"
    train_net(
        tmp_path,
        "--config-file",
        os.path.join(ROOT, "configs", "demo", "teacher.yaml"),
        "--coco",
        "mine_train",
        paths["train"],
        str(own),
        "--coco",
        "mine_val",
        paths["val"],
        str(own),
        "DATASETS.TRAIN",
        "('mine_train',)",
        "DATASETS.TEST",
        "('mine_val',)",
        "SOLVER.MAX_ITER",
        "2",
        "OUTPUT_DIR",
        str(out),
        *FAST,
    )
    assert (out / "model_final.pth").exists()
    assert not (tmp_path / "datasets").exists()  # no demo images written
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tools", "train_net.py"),
            "--config-file",
            os.path.join(ROOT, "configs", "demo", "teacher.yaml"),
            "DATASETS.TEST",
            "('theirs',)",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "DETECTRON2_DATASETS": str(tmp_path / "datasets")},
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error: dataset 'theirs' is not registered" in result.stderr
    assert "--coco theirs JSON IMAGE_ROOT" in result.stderr


def test_the_engine_is_a_library(tmp_path, monkeypatch):
    from detectron2.evaluation import DatasetEvaluators

    from conf_plugins.detectron2.engine import CalibrationTrainer, argument_parser, setup

    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))
    args = argument_parser().parse_args(
        [
            "--config-file",
            os.path.join(ROOT, "configs", "demo", "teacher.yaml"),
            "OUTPUT_DIR",
            str(tmp_path / "lib"),
            "MODEL.DEVICE",
            "cpu",
        ]
    )
    cfg = setup(args)  # registers (and generates) the demo data the config names
    assert (tmp_path / "datasets" / "conf_demo_det" / "annotations").is_dir()
    evaluator = CalibrationTrainer.build_evaluator(cfg, "conf_demo_det_val")
    assert isinstance(evaluator, DatasetEvaluators)


def test_setup_raises_and_checks_only_the_datasets_asked_for(tmp_path, monkeypatch):
    """Library errors are exceptions (the tools turn them into a message); a tool working on
    one split checks that one alone, not the config's training set."""
    from conf_plugins.detectron2.engine import argument_parser, register_datasets, setup

    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))
    config = os.path.join(ROOT, "configs", "demo", "teacher.yaml")

    def args(*extra):
        return argument_parser().parse_args(
            ["--config-file", config, "OUTPUT_DIR", str(tmp_path / "o"), "MODEL.DEVICE", "cpu", *extra]
        )

    with pytest.raises(ValueError, match="--config-file is required"):
        setup(argument_parser().parse_args([]))
    absent_train = ("DATASETS.TRAIN", "('absent_train',)")
    with pytest.raises(ValueError, match="'absent_train' is not registered: .* --coco absent_train"):
        setup(args(*absent_train))
    cfg = setup(args(*absent_train), datasets_to_check=("conf_demo_det_val",))
    assert cfg.DATASETS.TRAIN == ("absent_train",)
    with pytest.raises(ValueError, match="'absent_val' is not registered"):
        setup(args(), datasets_to_check=("absent_val",))
    with pytest.raises(ValueError, match=r"entries are \(name, json_file, image_root\)"):
        register_datasets(cfg, [("a", "b")])
    with pytest.raises(FileNotFoundError, match="'mine': no such COCO JSON"):
        register_datasets(cfg, [("mine", str(tmp_path / "none.json"), str(tmp_path))])
    with pytest.raises(ValueError, match="'conf_demo_det_val' is already registered"):
        register_datasets(cfg, [("conf_demo_det_val", config, str(tmp_path))])
