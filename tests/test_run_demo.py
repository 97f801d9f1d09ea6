"""The main job (tools/run_demo.py) on a tiny size of the demo data: every stage runs through
the real frameworks, the report's tables hold finite numbers and its images exist; a second
run skips every stage."""
import math
import os
import re
import subprocess
import sys

from tests.fixtures import load_tool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_demo(cwd):
    env = {**os.environ, "DETECTRON2_DATASETS": "datasets"}
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "run_demo.py"), "--tiny"],
                            cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


def table_rows(report, header_start):
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in line.strip("|").split("|")))))
    return rows


def test_tiny_pipeline_report(tmp_path):
    run_demo(tmp_path)
    out = tmp_path / "output" / "demo"
    report = (out / "report.md").read_text()
    det = table_rows(report, "| method | mAP")
    assert [r["method"] for r in det] == ["Baseline", "MC-10", "DDN"]
    for row in det:
        for key in ("mAP", "ECE@0.5", "MSCE@0.3", "MCE@0.7", "NLL@0.5"):
            assert math.isfinite(float(row[key])), (row["method"], key)
    seg = table_rows(report, "| domain | method")
    assert [r["method"] for r in seg] == ["STL", "STL-scaled", "MTL", "MTL max-softmax"] * 2
    for row in seg:
        for key in ("mIoU", "ECE", "AUROC", "AURC", "AUPR_In", "AUPR_Out", "coverage",
                    "failure_detection", "accuracy"):
            assert math.isfinite(float(row[key])), (row["method"], key)
    images = re.findall(r"\]\((figures/[^)]+\.png)\)", report)
    assert len(images) >= 17  # 4 detection + 8 segmentation plots, 4 heat-maps, sigmas
    for image in images:
        assert (out / image).stat().st_size > 1000, image
    for needed in ("sigma_trajectories.png", "seg_risk_coverage_off-domain.png",
                   "MTL_val_shifted_demo_00000_leftImg8bit_pred_confidence.png"):
        assert (out / "figures" / needed).exists(), needed
    assert "tools/train_net.py" in report and "tools/fit_calibration.py" in report

    second = run_demo(tmp_path)
    assert second.count("up to date, skipped") == second.count("[demo] ") - 1


def test_report_says_when_a_confidence_flags_nothing():
    report = load_tool("demo_report")
    table = [("in-domain", "MTL", {"calib/coverage": 0.998, "calib/failure_detection": 0.01}),
             ("in-domain", "STL", {"calib/coverage": 0.95, "calib/failure_detection": 0.40})]
    notes = report.flags_nothing_notes(table)
    assert len(notes) == 2 and notes[0].startswith("* MTL, in-domain: at 0.5 it calls 99.8 %")
    assert "flags only 1.0 % of the wrong ones" in notes[0]
