"""The main job (demo/run_demo.py) on a tiny size of the demo data: every stage runs through
the real frameworks, the report's tables hold finite numbers and its images exist; a second
run skips every stage."""

import json
import math
import os
import re
import subprocess
import sys

from tests.fixtures import load_tool, run_tiny_demo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def table_rows(report, header_start):
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in line.strip("|").split("|")))))
    return rows


def test_tiny_pipeline_report(tiny_demo):
    tmp_path = tiny_demo
    out = tmp_path / "output" / "demo"
    report = (out / "report.md").read_text()
    det = table_rows(report, "| method | mAP")
    assert [r["method"] for r in det] == [
        "Baseline",
        "Baseline + temperature",
        "Baseline + isotonic",
        "MC-10",
        "DDN",
        "DDN + temperature",
    ]
    for row in det:
        for key in (
            "mAP",
            "ECE",
            "MSCE",
            "MCE",
            "NLL",
            "classwise_ECE",
            "LaECE",
            "D-ECE",
            "coverage",
            "failure_detection",
        ):
            assert math.isfinite(float(row[key])), (row["method"], key)
    other = table_rows(report, "| method | ECE@0.3")
    assert len(other) == 6 and all(math.isfinite(float(r["MSCE@0.7"])) for r in other)
    assert "tools/fit_detection_calibration.py" in report and "goal (−50 %" in report
    for needed in ("det_classwise_reliability_iou0.5.png", "det_dece_map_ddn_iou0.5.png"):
        assert (out / "figures" / needed).exists(), needed
    seg = table_rows(report, "| domain | method")
    assert [r["method"] for r in seg] == [
        "STL",
        "STL-scaled",
        "MTL",
        "MTL max-softmax",
        "MC-10",
        "STL + Selective Scaling",
        "STL + local temperature",
        "MTL + Selective Scaling",
        "STL-scaled (perturbed calib)",
        "MTL (perturbed calib)",
        "STL + Selective Scaling (perturbed calib)",
        "STL + local temperature (image)",
        "STL + local temperature (image, perturbed calib)",
        "STL + image temperature",
        "STL + image temperature (perturbed calib)",
    ] * 2
    for row in seg:
        for key in (
            "mIoU",
            "ECE",
            "AUROC",
            "AURC",
            "AUPR_In",
            "AUPR_Out",
            "coverage",
            "failure_detection",
            "accuracy",
        ):
            assert math.isfinite(float(row[key])), (row["method"], key)
    numbers = json.loads((out / "report.json").read_text())  # every number beside the Markdown
    for row in seg:
        metrics = numbers["segmentation"][row["domain"]][row["method"]]
        assert f"{metrics['calib/ECE']:.4f}" == row["ECE"], row["method"]
    for row in det:
        assert f"{numbers['detection'][row['method']]['calibration']['ECE@IoU0.5']:.4f}" == row["ECE"]
    images = re.findall(r"\]\((figures/[^)]+\.png)\)", report)
    assert len(images) >= 19  # 4 + 2 detection, 8 segmentation plots, 4 panels, sigmas
    for image in images:
        assert (out / image).stat().st_size > 1000, image
    for needed in (
        "sigma_trajectories.png",
        "seg_risk_coverage_off-domain.png",
        "MTL_val_shifted_pred_confidence.png",
        "STL_val_max_softmax.png",
    ):
        assert (out / "figures" / needed).exists(), needed
    import numpy as np
    from PIL import Image

    panels = np.asarray(Image.open(out / "figures" / "MTL_val_shifted_pred_confidence.png"))
    assert panels.shape[1] == 4 * 256  # image | prediction | errors | confidence
    assert len(list((out / "figures").glob("det_detections_*/*_detections.png"))) == 3  # + MC-10
    assert "tools/train_net.py" in report and "tools/fit_calibration.py" in report
    # intervals on the numbers, paired comparisons, the shift view
    baseline = numbers["detection"]["Baseline"]["calibration"]
    assert (
        baseline["ECE@IoU0.5_ci_lo"] <= baseline["ECE@IoU0.5"] + 1e-12 <= baseline["ECE@IoU0.5_ci_hi"] + 2e-12
    )
    pairs = {(c["A"], c["B"], c["metric"]) for c in numbers["comparisons"]}
    assert ("DDN", "Baseline", "ECE") in pairs and ("MTL", "MTL max-softmax", "AUROC") in pairs
    assert all(
        c["verdict"] in ("A better", "B better", "no significant difference") for c in numbers["comparisons"]
    )
    assert set(numbers["shift"]) == {
        "det_baseline",
        "det_baseline_isotonic",
        "det_ddn",
        "seg_stl",
        "seg_stl_scaled",
        "seg_mtl",
        "seg_mtl_softmax",
        "seg_stl_mc10",
        "seg_stl_selective",
        "seg_stl_lts",
        "seg_mtl_selective",
        "seg_stl_scaled_perturbed",
        "seg_mtl_perturbed",
        "seg_stl_selective_perturbed",
        "seg_stl_lts_image",
        "seg_stl_lts_image_perturbed",
        "seg_stl_image_temperature",
        "seg_stl_image_temperature_perturbed",
    }
    assert {(r["corruption"], r["severity"]) for r in numbers["shift"]["seg_mtl"]} == {
        ("none", 0),
        ("gaussian_noise", 5),
    }
    assert "## Paired comparisons" in report and "## Calibration under corruption" in report
    # risk-controlled selective segmentation of the STL: fitted on calib, realised on both splits
    risk = numbers["risk_control"]
    assert risk["fitted"]["alpha"] == 0.1 and risk["fitted"]["images"] == 9
    for split in ("val", "val_shifted"):
        assert risk[split]["selective_risk_ci_lo"] <= risk[split]["selective_risk"] <= 1
        assert 0 <= risk[split]["abstention"] <= 1
    assert "## Risk-controlled selective segmentation (STL)" in report
    assert "## Detection at the operating point" in report  # the protocol table, seed 0 only
    assert "| DDN without teacher (control) | identity |" in report

    second = run_tiny_demo(tmp_path)
    assert second.count("up to date, skipped") == second.count("[demo] ") - 1


def test_report_says_when_a_confidence_flags_nothing():
    report = load_tool("demo_report")
    table = [
        ("in-domain", "MTL", {"calib/coverage": 0.998, "calib/failure_detection": 0.01}),
        ("in-domain", "STL", {"calib/coverage": 0.95, "calib/failure_detection": 0.40}),
    ]
    notes = report.flags_nothing_notes(table)
    assert len(notes) == 2 and notes[0].startswith("* MTL, in-domain: at 0.5 it calls 99.8 %")
    assert "flags only 1.0 % of the wrong ones" in notes[0]


def test_tiny_success_ablation_reuses_the_demo_and_chooses_on_calib(tiny_demo):
    """experiments/success_ablation/success_ablation.py --tiny beside the tiny demo: its STL /
    MTL training stages are the demo's (skipped), every variant row has finite numbers, the
    choice is a PoS row and follows the calib-select rule; a second run trains nothing."""
    cmd = [
        sys.executable,
        os.path.join(ROOT, "experiments", "success_ablation", "success_ablation.py"),
        "--tiny",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run(cmd, cwd=tiny_demo, env=env, capture_output=True, text=True, timeout=1200)
    assert first.returncode == 0, first.stderr[-4000:]
    assert "seg_mtl: up to date, skipped" in first.stdout
    report = json.loads((tiny_demo / "output" / "ablation" / "report.json").read_text())
    rows = report["rows"]
    names = {r["name"] for r in rows}
    assert {
        "STL",
        "balanced snapshot",
        "balanced live",
        "balanced net@2",
        "paper snapshot",
        "kendall snapshot",
        "seg_conf snapshot",
        "balanced max-softmax",
        "balanced refit",
        "kendall refit-balanced",
    } <= names
    perturbed = " (perturbed calib)"
    assert {r["map"] for r in rows if r["name"] == "STL"} == {
        "softmax",
        "scaled",
        "selective",
        "scaled" + perturbed,
        "selective" + perturbed,
    }
    assert {r["map"] for r in rows if r["name"] == "seg_conf live"} >= {
        "fusion" + perturbed,
        "fusion-image",
        "fusion-image" + perturbed,
    }
    for row in rows:
        for split in ("calib_select", "val", "val_shifted"):
            assert math.isfinite(row[split]["ECE"]) and 0 <= row[split]["coverage"] <= 1
    # one network segments the same val images, whatever predicts its success: the perturbed
    # calib passes leave the later (live branch, refit) passes uncorrupted
    for network in ("balanced", "seg_conf"):
        mious = {r["val"]["mIoU"] for r in rows if r["name"].split(" ")[0] == network}
        assert len(mious) == 1, (network, mious)
    candidates = [
        r
        for r in rows
        if r["map"] in ("bayes10", "bayes100", "fusion", "fusion" + perturbed)
        and r["name"].endswith((" snapshot", " live"))
    ]  # deployable
    best = max(r["calib_select"]["AUROC"] for r in candidates)
    chosen = next(
        r for r in rows if (r["name"], r["map"]) == (report["chosen"]["name"], report["chosen"]["map"])
    )
    assert chosen in candidates and round(chosen["calib_select"]["AUROC"], 4) == round(best, 4)
    second = subprocess.run(cmd, cwd=tiny_demo, env=env, capture_output=True, text=True, timeout=1200)
    assert second.returncode == 0
    assert second.stdout.count("up to date, skipped") == 2 + 3  # STL, MTL, the three variants


def test_cache_key_covers_the_code_a_stage_runs(monkeypatch, tmp_path):
    """A change to the package re-runs exactly the stages whose code changed."""
    demo = load_tool("run_demo")
    seg = next(s for s in demo.segmentation_stages(str(tmp_path), tiny=True) if s.name == "seg_mtl")
    det = next(s for s in demo.detection_stages(str(tmp_path), tiny=True) if s.name == "det_teacher")
    seg_files = {os.path.relpath(p, ROOT) for p in seg.sources()}
    det_files = {os.path.relpath(p, ROOT) for p in det.sources()}
    assert {
        "conf_plugins/mmseg/metric.py",
        "tools/seg_train.py",
        "requirements/pins.txt",
        "conf_plugins/calibration/stats.py",
    } <= seg_files
    assert not any(f.startswith("conf_plugins/detectron2") for f in seg_files)
    assert {"conf_plugins/detectron2/evaluator.py", "tools/train_net.py"} <= det_files
    assert not any(f.startswith("conf_plugins/mmseg") for f in det_files)
    module = tmp_path / "adapter_module.py"
    module.write_text("A = 1\n")
    monkeypatch.setattr(demo, "SHARED_SOURCES", demo.SHARED_SOURCES + (str(module),))
    before = seg.key({}), det.key({})
    module.write_text("A = 2\n")
    assert seg.key({}) != before[0] and det.key({}) != before[1]


def test_a_second_training_seed_reuses_seed_0_and_reports_the_spread(tiny_demo):
    """--seeds 2 beside the tiny demo: seed 0's stages are cached, seed 1 trains and evaluates
    in output/demo/seeds/1 with SEED 1, and the report gives mean ± std over the two seeds."""
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "demo", "run_demo.py"),
            "--tiny",
            "--seeds",
            "2",
            "--only",
            "det",
        ],
        cwd=tiny_demo,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "det_teacher: up to date, skipped" in result.stdout
    assert "det_teacher@seed1" in result.stdout and "det_shift_baseline@seed1" not in result.stdout
    seed1 = tiny_demo / "output" / "demo" / "seeds" / "1" / "det" / "teacher"
    assert (seed1 / "model_final.pth").exists() and '"SEED", "1"' not in (seed1 / "config.yaml").read_text()
    assert "SEED: 1" in (seed1 / "config.yaml").read_text()
    numbers = json.loads((tiny_demo / "output" / "demo" / "report.json").read_text())
    rows = {(r["domain"], r["method"]): r["values"] for r in numbers["seeds"]["rows"]}
    assert numbers["seeds"]["count"] == 2 and len(rows[("detection", "Baseline")]["ECE@IoU0.5"]) == 2
    assert "## Over 2 training seeds" in (tiny_demo / "output" / "demo" / "report.md").read_text()
