"""mmseg tools end to end on tiny demo data: training with the snapshot hook, resume (torch's
safe loader on mmengine checkpoints), Bayes binning / temperature fitting, testing in- and
off-domain, and torchrun with 2 CPU processes (gloo) giving the metrics of 1."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conf_plugins.mmseg import generate_demo_segmentation
from tests.fixtures import load_tool

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MTL = os.path.join(ROOT, "configs", "mmseg", "demo", "fcn_r18_mtl.py")
STL = os.path.join(ROOT, "configs", "mmseg", "demo", "fcn_r18_stl.py")
STL_SELECTIVE = os.path.join(ROOT, "configs", "mmseg", "demo", "fcn_r18_stl_selective.py")
STL_LTS = os.path.join(ROOT, "configs", "mmseg", "demo", "fcn_r18_stl_lts.py")
STL_IMAGE_TEMPERATURE = os.path.join(ROOT, "configs", "mmseg", "demo", "fcn_r18_stl_image_temperature.py")
STL_LTS_IMAGE = os.path.join(ROOT, "configs", "mmseg", "demo", "fcn_r18_stl_lts_image.py")
FAST = [
    "train_dataloader.batch_size=2",
    "default_hooks.logger.interval=1",
    "train_cfg.val_interval=1000",
    "default_hooks.checkpoint.interval=2",
]


def iters(n):
    return [f"train_cfg.max_iters={n}", f"param_scheduler.0.end={n}"]


def run(workdir, script, *args, torchrun=0):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, os.path.join(ROOT, "tools", script), *args]
    if torchrun:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={torchrun}",
            "--standalone",
            *cmd[1:],
            "--launcher",
            "pytorch",
        ]
    result = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (
        f"{' '.join(cmd)}\nrc={result.returncode}\n"
        f"stdout:\n{result.stdout[-2000:]}\nstderr:\n{result.stderr[-6000:]}"
    )
    return result


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seg")
    generate_demo_segmentation(
        str(folder / "datasets" / "conf_demo_seg"),
        num_images={"train": 4, "calib": 2, "val": 3, "val_shifted": 3},
    )
    return folder


def load_state(path):
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def test_snapshot_survives_save_and_resume(workdir):
    out = str(workdir / "mtl")
    run(
        workdir,
        "seg_train.py",
        MTL,
        "--work-dir",
        out,
        "--cfg-options",
        *FAST,
        *iters(4),
        "custom_hooks.0.snapshot_iter=2",
    )
    at2, at4 = load_state(f"{out}/iter_2.pth"), load_state(f"{out}/iter_4.pth")
    head = "decode_head."
    assert bool(at2[head + "snapshot_taken"]) and bool(at4[head + "snapshot_taken"])
    for k in (k for k in at4 if k.startswith(head + "success_snapshot.")):
        live = k.replace("success_snapshot", "success_branch")
        assert torch.equal(at4[k], at2[live]), k  # snapshot = the branch at iteration 2
    assert not torch.equal(at4[head + "success_branch.1.weight"], at4[head + "success_snapshot.1.weight"])
    log = run(
        workdir,
        "seg_train.py",
        MTL,
        "--work-dir",
        out,
        "--resume",
        "--cfg-options",
        *FAST,
        *iters(6),
        "custom_hooks.0.snapshot_iter=2",
    )
    assert "resumed" in (log.stdout + log.stderr).lower()
    at6 = load_state(f"{out}/iter_6.pth")
    assert torch.equal(at6[head + "success_snapshot.1.weight"], at2[head + "success_branch.1.weight"])
    assert "decode.sigma_seg" in open(next((workdir / "mtl").rglob("*.log"))).read()


def test_bayes_binning_then_test_in_and_off_domain(workdir):
    out = str(workdir / "mtl_fit")
    run(
        workdir,
        "seg_train.py",
        MTL,
        "--work-dir",
        out,
        "--cfg-options",
        *FAST,
        *iters(2),
        "custom_hooks.0.snapshot_iter=1",
    )
    bayes = ["--cfg-options", "model.pos_map=bayes"]  # the demo MTL maps with fusion
    fitted = json.loads(
        run(workdir, "fit_calibration.py", MTL, f"{out}/iter_2.pth", *bayes).stdout.strip().splitlines()[-1]
    )
    assert fitted["checkpoint"].endswith("iter_2_bayes.pth") and fitted["pixels"] > 0
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "fit_calibration.py"), MTL, f"{out}/iter_2.pth", *bayes],
        cwd=workdir,
        capture_output=True,
        text=True,
        env=dict(os.environ),
    )
    assert result.returncode == 1 and "--force" in result.stderr  # never overwrites silently
    assert "error: " in result.stderr and "Traceback" not in result.stderr
    for split in ("val", "val_shifted"):
        metrics_file = str(workdir / f"{split}.json")
        show = ["--show-dir", str(workdir / "show")] if split == "val" else []
        run(
            workdir,
            "seg_test.py",
            MTL,
            fitted["checkpoint"],
            "--work-dir",
            out,
            *show,
            "--out",
            metrics_file,
            "--cfg-options",
            "model.pos_map=bayes",
            "test_evaluator.1.confidence=pred_confidence",
            f"test_dataloader.dataset.data_prefix.img_path=leftImg8bit/{split}",
            f"test_dataloader.dataset.data_prefix.seg_map_path=gtFine/{split}",
        )
        metrics = json.load(open(metrics_file))
        assert {"mIoU", "calib/ECE", "calib/AUROC", "calib/F0.5"} <= set(metrics)
        assert 0 <= metrics["calib/ECE"] <= 1
    # the fusion probability of success: fitted into its own checkpoint, tested with the same map
    fusion = ["--cfg-options", "model.pos_map=fusion"]
    fused = json.loads(
        run(workdir, "fit_calibration.py", MTL, f"{out}/iter_2.pth", *fusion).stdout.splitlines()[-1]
    )
    assert fused["checkpoint"].endswith("iter_2_fusion.pth") and len(fused["coef"]) == 3
    run(
        workdir,
        "seg_test.py",
        MTL,
        fused["checkpoint"],
        "--out",
        str(workdir / "fusion.json"),
        *fusion,
        "test_evaluator.1.confidence=pred_confidence",
    )
    assert 0 <= json.load(open(workdir / "fusion.json"))["calib/ECE"] <= 1
    drawn = sorted((workdir / "show").rglob("*.png"))  # SegVisualizationHook + our visualizer
    assert len(drawn) == 3  # one per val image: image | prediction | errors | confidence
    height, width = np.asarray(Image.open(drawn[0])).shape[:2]
    assert (height, width) == (128 + 18, 4 * 256)


def test_temperature_scaling_for_the_stl_baseline(workdir):
    out = str(workdir / "stl")
    run(workdir, "seg_train.py", STL, "--work-dir", out, "--cfg-options", *FAST, *iters(2))
    run(workdir, "fit_calibration.py", STL, f"{out}/iter_2.pth")
    fitted = json.load(open(f"{out}/temperature.json"))
    assert fitted["temperature"] > 0 and fitted["pixels"] > 0
    assert fitted["dataloader"] == "calib_dataloader"
    assert fitted["data"]["data_prefix"]["img_path"] == "leftImg8bit/calib"
    # on calib and its copies under a held-out corruption: every labelled pixel twice
    perturbed = json.loads(
        run(
            workdir,
            "fit_calibration.py",
            STL,
            f"{out}/iter_2.pth",
            "--work-dir",
            f"{out}/perturbed",
            "--perturb",
            "speckle_noise",
            "--perturb-severities",
            "5",
        ).stdout.splitlines()[-1]
    )
    assert perturbed["pixels"] == 2 * fitted["pixels"]
    assert perturbed["perturbed"] == {"corruptions": ["speckle_noise"], "severities": [5]}
    assert perturbed["temperature"] != fitted["temperature"]  # the corrupted copies moved it
    # risk-controlled selective segmentation: the threshold fitted on calib, evaluated on val
    run(workdir, "fit_calibration.py", STL, f"{out}/iter_2.pth", "--risk-control", "0.5")
    risk = json.load(open(f"{out}/risk_control.json"))
    assert risk["confidence"] == "max_softmax" and risk["images"] == 2 and risk["alpha"] == 0.5
    assert risk["calib_risk"] <= 0.5 and 0 <= risk["threshold"] <= 1
    result = run(
        workdir,
        "seg_test.py",
        STL,
        f"{out}/iter_2.pth",
        "--out",
        f"{out}/risk_test.json",
        "--cfg-options",
        f"test_evaluator.1.risk_control={out}/risk_control.json",
    )
    tested = json.load(open(f"{out}/risk_test.json"))
    assert 0 <= tested["calib/selective_risk"] <= 1 and 0 <= tested["calib/abstention"] <= 1, result.stdout[
        -500:
    ]
    # per-pixel calibrators held by the model: fitted into their own checkpoint, then tested
    for config, kind in (
        (STL_SELECTIVE, "selective_scaling"),
        (STL_LTS, "local_temperature"),
        (STL_LTS_IMAGE, "local_temperature_image"),
        (STL_IMAGE_TEMPERATURE, "image_temperature"),
    ):
        fitted = json.loads(
            run(workdir, "fit_calibration.py", config, f"{out}/iter_2.pth").stdout.splitlines()[-1]
        )
        assert fitted["method"] == kind and fitted["checkpoint"].endswith(f"iter_2_{kind}.pth")
        assert fitted["pixels"] > 0 and fitted["dataloader"] == "calib_dataloader"
        run(workdir, "seg_test.py", config, fitted["checkpoint"], "--out", f"{out}/{kind}.json")
        tested = json.load(open(f"{out}/{kind}.json"))
        assert tested["mIoU"] == json.load(open(f"{out}/risk_test.json"))["mIoU"]  # same prediction
        assert 0 <= tested["calib/ECE"] <= 1
    failed = subprocess.run(  # the unfitted checkpoint under a calibrated config: refused
        [sys.executable, os.path.join(ROOT, "tools", "seg_test.py"), STL_LTS, f"{out}/iter_2.pth"],
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    assert failed.returncode != 0 and "pixel_calibrator" in failed.stderr


def split_options(loader, split):
    return [
        f"{loader}.dataset.data_prefix.img_path=leftImg8bit/{split}",
        f"{loader}.dataset.data_prefix.seg_map_path=gtFine/{split}",
    ]


def test_fit_calibration_refuses_bad_splits_and_writes_nothing(workdir, monkeypatch, tmp_path):
    """The split comes from the config; the evaluated split, an empty split and an all-ignore
    split are clear errors that leave no file behind."""
    fit = load_tool("fit_calibration").main
    stl, mtl = str(workdir / "stl" / "iter_2.pth"), str(workdir / "mtl_fit" / "iter_2.pth")
    if not (os.path.exists(stl) and os.path.exists(mtl)):
        pytest.skip("needs the checkpoints of the two tests above")
    monkeypatch.chdir(workdir)
    with pytest.raises(ValueError, match="evaluates on"):
        fit([STL, stl, "--cfg-options", *split_options("calib_dataloader", "val")])
    with pytest.raises(ValueError, match="has no 'held_out'"):
        fit([STL, stl, "--dataloader", "held_out"])
    with pytest.raises(ValueError, match="unknown corruption 'rain'"):
        fit([STL, stl, "--perturb", "rain"])
    with pytest.raises(SystemExit):  # corrupted copies are not exchangeable with test images
        fit([STL, stl, "--perturb", "held_out", "--risk-control", "0.5"])
    (workdir / "datasets" / "conf_demo_seg" / "leftImg8bit" / "empty").mkdir(exist_ok=True)
    (workdir / "datasets" / "conf_demo_seg" / "gtFine" / "empty").mkdir(exist_ok=True)
    with pytest.raises(ValueError, match="has no images"):
        fit(
            [
                STL,
                stl,
                "--work-dir",
                str(tmp_path / "t"),
                "--cfg-options",
                *split_options("calib_dataloader", "empty"),
            ]
        )
    # an all-ignore split: a copy of calib whose labels are all ignore_index
    root = workdir / "datasets" / "conf_demo_seg"
    for kind in ("leftImg8bit", "gtFine"):
        (root / kind / "blank" / "demo").mkdir(parents=True, exist_ok=True)
    for img in (root / "leftImg8bit" / "calib" / "demo").iterdir():
        (root / "leftImg8bit" / "blank" / "demo" / img.name).write_bytes(img.read_bytes())
    for lab in (root / "gtFine" / "calib" / "demo").glob("*_labelTrainIds.png"):
        blank = np.full(np.asarray(Image.open(lab)).shape, 255, np.uint8)
        Image.fromarray(blank).save(root / "gtFine" / "blank" / "demo" / lab.name)
    before = set(os.listdir(workdir / "mtl_fit"))
    with pytest.raises(ValueError, match="every pixel of the split is ignore_index"):
        fit([MTL, mtl, "--force", "--cfg-options", *split_options("calib_dataloader", "blank")])
    with pytest.raises(ValueError, match="every pixel of the split is ignore_index"):
        fit(
            [
                STL,
                stl,
                "--work-dir",
                str(tmp_path / "t"),
                "--cfg-options",
                *split_options("calib_dataloader", "blank"),
            ]
        )
    assert set(os.listdir(workdir / "mtl_fit")) == before  # no half-written *_bayes.pth
    assert not (tmp_path / "t" / "temperature.json").exists()
    new_dir = tmp_path / "not" / "yet"  # a missing --work-dir is created, before fitting
    result = fit(
        [
            STL,
            stl,
            "--work-dir",
            str(new_dir),
            "--allow-eval-split",
            "--cfg-options",
            *split_options("calib_dataloader", "val"),
        ]
    )
    assert json.load(open(new_dir / "temperature.json"))["temperature"] == result["temperature"]
    assert [f for f in os.listdir(new_dir) if f.startswith("tmp_")] == []


def test_seg_test_refuses_a_checkpoint_without_the_success_branch(workdir):
    stl = str(workdir / "stl" / "iter_2.pth")
    if not os.path.exists(stl):
        pytest.skip("needs the STL checkpoint of test_temperature_scaling_for_the_stl_baseline")
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tools", "seg_test.py"),
            MTL,
            stl,
            "--work-dir",
            str(workdir / "refused"),
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=600,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error: " in result.stderr and "lacks" in result.stderr
    assert "decode_head.success_branch" in result.stderr


def test_torchrun_two_cpu_processes_train_and_match_one(workdir):
    out = str(workdir / "ddp")
    run(
        workdir,
        "seg_train.py",
        MTL,
        "--work-dir",
        out,
        "--cfg-options",
        *FAST,
        *iters(2),
        "custom_hooks.0.snapshot_iter=1",
        torchrun=2,
    )
    checkpoint = f"{out}/iter_2.pth"
    results = []
    for procs in (1, 2):
        metrics_file = str(workdir / f"ddp{procs}.json")
        args = [
            MTL,
            checkpoint,
            "--work-dir",
            out,
            "--out",
            metrics_file,
            "--cfg-options",
            "test_evaluator.1.confidence=success_score",
        ]
        run(workdir, "seg_test.py", *args, torchrun=procs if procs > 1 else 0)
        results.append(json.load(open(metrics_file)))
    assert results[0].keys() == results[1].keys()
    assert "calib/ECE_ci_lo" in results[0]  # the bootstrap intervals too: images, not ranks
    for k, v in results[0].items():
        if k.startswith("calib/") or k in ("mIoU", "aAcc"):
            assert results[1][k] == pytest.approx(v, rel=1e-9, nan_ok=True), k


def test_resume_after_a_kill(workdir):
    """SIGKILL mid-training (after the first checkpoint), then --resume: the run completes
    from the saved iteration with the snapshot it had taken."""
    import time

    out = workdir / "killed"
    cmd = [
        sys.executable,
        os.path.join(ROOT, "tools", "seg_train.py"),
        MTL,
        "--work-dir",
        str(out),
        "--cfg-options",
        *FAST,
        *iters(200),
        "custom_hooks.0.snapshot_iter=1",
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=workdir,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 400
    try:
        while not (out / "iter_4.pth").exists():  # iter_2 complete once iter_4 is being made
            assert proc.poll() is None and time.time() < deadline, "training ended early"
            time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait()
    assert not (out / "iter_200.pth").exists()
    log = run(
        workdir,
        "seg_train.py",
        MTL,
        "--work-dir",
        str(out),
        "--resume",
        "--cfg-options",
        *FAST,
        *iters(6),
        "custom_hooks.0.snapshot_iter=1",
        f"load_from={out}/iter_2.pth",
    )
    assert "resumed" in (log.stdout + log.stderr).lower()
    at2, at6 = load_state(f"{out}/iter_2.pth"), load_state(f"{out}/iter_6.pth")
    assert torch.equal(
        at6["decode_head.success_snapshot.1.weight"], at2["decode_head.success_snapshot.1.weight"]
    )


def test_uniform_sample_keeps_the_smallest_keys_of_the_whole_stream():
    sample = load_tool("fit_calibration").UniformSample(size=5, seed=0)
    logits = torch.arange(40, dtype=torch.float32).reshape(20, 2)
    for part in range(4):
        rows = slice(5 * part, 5 * part + 5)
        sample.add(logits[rows], torch.arange(20)[rows])
    keys = torch.rand(20, generator=torch.Generator().manual_seed(0))  # the same draws
    expected = keys.topk(5, largest=False).indices
    (labels,) = sample.columns
    assert sample.seen == 20 and sorted(labels.tolist()) == sorted(expected.tolist())
    assert torch.equal(sample.values[:, 0], 2 * labels.float())
