"""The README and the docs cannot drift from the code.

* Every bash block of README.md and docs/*.md runs **through bash, literally**, inside the
  activated environment (``source .venv/bin/activate``, as the README says once at the top),
  from a folder laid out like the repository root after ``make demo`` — on tiny data: the
  only changes are appended overrides (those of ``demo/run_demo.py --tiny``, e.g. its one
  corruption for ``--perturb``) and the
  checkpoint name of a 4-iteration run (``iter_4`` for ``iter_600``). ``make`` lines name
  existing targets (``make test`` is this suite; ``make demo`` is the tiny demo below).
* Blocks preceded by ``<!-- full-scale: ... -->`` need COCO / Cityscapes / 8 GPUs: their
  tools, flags and configs are checked to exist, not run; so are the experiments' commands.
* Every Python snippet runs as written; the config snippet builds on a stock mmseg config.
* The generated pages equal what ``docs/generate.py`` makes of ``docs/data/``.
"""

import functools
import glob
import os
import re
import shlex
import subprocess
import sys

import pytest

from tests.fixtures import ROOT, load_tool

DOCS = ["README.md", *sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))]
EXPERIMENTS = sorted(
    os.path.relpath(p, ROOT)
    for p in glob.glob(os.path.join(ROOT, "experiments", "**", "README.md"), recursive=True)
)
FULL_SCALE = "<!-- full-scale:"
# what a folder laid out like the repository root needs (the environment included)
LAYOUT = (".venv", "tools", "configs", "demo", "docs", "experiments", "Makefile")


def blocks(path):
    """(language, code, full_scale) of every fenced block of ``path``."""
    text = open(os.path.join(ROOT, path)).read()
    out = []
    for match in re.finditer(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M):
        before = text[: match.start()].rstrip().splitlines()
        out.append((match.group(1), match.group(2), bool(before) and before[-1].startswith(FULL_SCALE)))
    return out


def command_lines(code):
    """The command lines of a bash block: continuations joined, comment lines dropped."""
    lines = []
    for line in code.replace("\\\n", " ").splitlines():
        if line.strip() and not line.strip().startswith("#"):
            lines.append(line.strip())
    return lines


# a LazyConfig's key=value overrides of the same tiny run
TINY_LAZY = (
    "train.max_iter=4",
    "dataloader.train.total_batch_size=2",
    "model.roi_heads.box_predictor.test_score_thresh=0.0",
)


def tiny(line):
    """A documented command with the tiny run's iteration overrides appended."""
    run_demo = load_tool("run_demo")
    line = line.replace("iter_600", "iter_4")
    if re.match(r"python tools/(train_net|fit_detection_calibration)\.py", line):
        extra = list(run_demo.TINY_DET)  # and, as the tiny demo's protocol: thresholds at 0,
        if "fit_detection_calibration" in line:  # box intervals that a 4-iteration model can fit
            extra += run_demo.TINY_PROTOCOL
        if "BOX_CONFORMAL.SCORE" in line:
            extra += run_demo.TINY_BOX
        return line + " " + shlex.join(extra)
    if line.startswith("python tools/lazy_train_net.py"):
        return line + " " + " ".join(TINY_LAZY)
    if line.startswith("python tools/seg_train.py"):
        snapshot = run_demo.TINY_SNAPSHOT if "mtl" in line else []
        return line + " --cfg-options " + shlex.join([*run_demo.TINY_SEG, *snapshot])
    if line.startswith("python tools/fit_calibration.py") and "--perturb" in line:
        return line + " " + shlex.join(run_demo.TINY_PERTURB)  # one corruption, one severity
    return line


def runnable(path):
    return [code for lang, code, full in blocks(path) if lang == "bash" and not full]


def run_through_bash(folder, code):
    """Run a documented bash block in ``folder`` inside the activated environment."""
    script = ["set -euo pipefail", "source .venv/bin/activate"]
    for line in command_lines(code):
        if line.startswith("make "):
            continue  # targets are checked below; `make test` is this suite
        script.append(tiny(line))
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "DETECTRON2_DATASETS")}
    result = subprocess.run(
        ["bash", "-c", "\n".join(script)], cwd=folder, env=env, capture_output=True, text=True, timeout=1800
    )
    assert result.returncode == 0, "\n".join(script) + "\n" + result.stderr[-4000:]
    return result.stdout + result.stderr


def lay_out(folder):
    for name in LAYOUT:
        if not os.path.exists(folder / name):
            os.symlink(os.path.join(ROOT, name), folder / name)
    return folder


def test_the_docs_have_what_this_test_runs():
    readme = runnable("README.md")
    assert any("fit_detection_calibration.py" in c for c in readme)
    assert any("seg_test.py" in c for c in readme)
    assert "source .venv/bin/activate" in "".join(readme)
    assert len(open(os.path.join(ROOT, "README.md")).read().splitlines()) <= 150
    started = "".join(runnable("docs/get_started.md"))
    assert "--coco mine_train" in started and "cityscapes_layout" in started


def test_readme_quickstarts_run_as_typed(tiny_demo):
    """After `make demo`: the detectron2 and mmseg quickstarts, line by line."""
    folder = lay_out(tiny_demo)
    output = "".join(run_through_bash(folder, code) for code in runnable("README.md"))
    assert "ECE@IoU0.5" in output
    assert (folder / "output" / "quickstart" / "teacher_isotonic.pth").exists()
    assert (folder / "output" / "quickstart" / "mtl" / "iter_4_fusion.pth").exists()
    drawings = list((folder / "output" / "quickstart" / "drawings").glob("*.png"))
    assert drawings, "the MC-dropout drawings of the quickstart"
    assert "calib/ECE" in output


def test_own_data_guides_run_as_typed(tmp_path):
    """docs/get_started.md's "your own data" blocks, on the demo's files as stand-ins."""
    from conf_plugins.detectron2 import generate_demo_detection
    from conf_plugins.mmseg.demo_data import generate_demo_segmentation

    run_demo = load_tool("run_demo")
    folder = lay_out(tmp_path)
    generate_demo_detection(str(folder / "datasets" / "conf_demo_det"), {"train": 4, "calib": 2, "val": 2})
    generate_demo_segmentation(str(folder / "datasets" / "conf_demo_seg"), run_demo.SEG_DATA_SIZES)
    for code in runnable("docs/get_started.md"):
        if "--coco" in code or "seg_train" in code:
            run_through_bash(folder, code)
    assert (folder / "output" / "mine" / "teacher_isotonic" / "eval_results.json").exists()
    assert (folder / "output" / "own_data" / "fcn_r18_mtl_cityscapes_layout" / "iter_4_fusion.pth").exists()


OTHER_RUNNABLE = [
    (p, code) for p in DOCS if p not in ("README.md", "docs/get_started.md") for code in runnable(p)
]


@pytest.mark.skipif(not OTHER_RUNNABLE, reason="the other pages hold full-scale commands only")
@pytest.mark.parametrize("path,code", OTHER_RUNNABLE)
def test_other_runnable_blocks_run_as_typed(path, code, tiny_demo):
    run_through_bash(lay_out(tiny_demo), code)


def python_snippets():
    return [(path, code) for path in DOCS for lang, code, _ in blocks(path) if lang == "python"]


@pytest.mark.parametrize("path,code", [s for s in python_snippets() if "custom_imports" not in s[1]])
def test_python_snippet_runs_as_written(path, code, tmp_path):
    from conf_plugins.detectron2 import generate_demo_detection

    folder = lay_out(tmp_path)
    generate_demo_detection(
        str(folder / "datasets" / "conf_demo_det"), {"train": 2, "val": 2}, image_size=64
    )  # what make demo leaves
    script = folder / "snippet.py"
    script.write_text(code)
    result = subprocess.run(
        [sys.executable, str(script)], cwd=folder, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{path}\n{code}\n{result.stderr[-3000:]}"


def test_config_snippet_builds_on_a_stock_config(tmp_path):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    (snippet,) = [code for _, code in python_snippets() if "custom_imports" in code]
    path = tmp_path / "my_config.py"
    path.write_text("_base_ = ['mmseg::fcn/fcn_r50-d8_4xb2-80k_cityscapes-512x1024.py']\n" + snippet)
    cfg = Config.fromfile(str(path))
    init_default_scope("mmseg")
    import conf_plugins.mmseg  # noqa: F401  (what custom_imports does)

    model = MODELS.build(cfg.model)
    assert type(model).__name__ == "SuccessEncoderDecoder"
    assert cfg.val_evaluator[1].confidence == "success_score"  # exists during training
    assert cfg.calib_dataloader.dataset.pipeline == cfg.test_pipeline


@functools.lru_cache(maxsize=None)
def tool_help(script):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, script), "--help"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, f"{script} --help failed: {result.stderr[-2000:]}"
    return result.stdout


def all_commands():
    out = []
    for path in DOCS + EXPERIMENTS:
        for lang, code, _ in blocks(path):
            if lang == "bash":
                out += [(path, line.split("  #")[0].split(" # ")[0].strip()) for line in command_lines(code)]
    return out


@pytest.mark.parametrize("path,command", all_commands())
def test_command_names_existing_tools_configs_and_flags(path, command):
    tokens = shlex.split(command)
    if tokens[0] == "make":
        targets = re.findall(r"^([a-z]+):", open(os.path.join(ROOT, "Makefile")).read(), re.M)
        assert all(t in targets for t in tokens[1:] if "=" not in t), command
        return
    if tokens[0] == "source":
        assert tokens[1] == ".venv/bin/activate", command
        return
    assert tokens[0] in ("python", "torchrun"), f"{path}: run tools as `python tools/...`: {command}"
    scripts = [t for t in tokens if re.match(r"^(tools|demo|experiments|docs|bench)/.*\.py$", t)]
    assert scripts, f"{path}: no script in: {command}"
    script = scripts[0]
    assert os.path.isfile(os.path.join(ROOT, script)), script
    assert os.access(os.path.join(ROOT, script), os.X_OK), f"{script} lost its executable bit"
    help_text = tool_help(script)
    for flag in (t.split("=")[0] for t in tokens[tokens.index(script) :] if t.startswith("--")):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text), (
            f"{script} does not accept {flag}"
        )
    for token in tokens:
        if token.startswith("configs/"):
            assert os.path.isfile(os.path.join(ROOT, token)), token


def test_generated_pages_are_current():
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "docs", "generate.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_no_internal_references_in_docs():
    """No internal ticket numbers, commit hashes or relative time words in the docs."""
    pattern = re.compile(r"\b(issue \d+|this session|last session|next session|commit [0-9a-f]{7,})\b", re.I)
    for path in DOCS + EXPERIMENTS + ["CONTRIBUTING.md"]:
        text = open(os.path.join(ROOT, path)).read()
        assert not pattern.search(text), f"{path}: {pattern.search(text).group(0)}"


def generator_in(tmp_path, monkeypatch):
    """docs/generate.py as a module whose inputs and outputs are copies under tmp_path
    (docs/ -> tmp_path/docs, the README, the study README -> tmp_path/study.md)."""
    import importlib.util
    import shutil

    spec = importlib.util.spec_from_file_location("generate", os.path.join(ROOT, "docs", "generate.py"))
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    docs, data = tmp_path / "docs", tmp_path / "docs" / "data"
    shutil.copytree(os.path.join(ROOT, "docs", "data"), data)
    shutil.copy(os.path.join(ROOT, "README.md"), tmp_path / "README.md")
    shutil.copy(os.path.join(ROOT, "experiments", "success_ablation", "README.md"), tmp_path / "study.md")
    for name, value in (
        ("DOCS", docs),
        ("DATA", data),
        ("DEMO_JSON", data / "demo_report.json"),
        ("SEEDS_JSON", data / "demo_seeds_report.json"),
        ("BENCH_DIR", data / "bench"),
        ("README", tmp_path / "README.md"),
        ("STUDY_JSON", data / "success_ablation.json"),
        ("STUDY_README", tmp_path / "study.md"),
    ):
        monkeypatch.setattr(generate, name, str(value))
    return generate


def test_a_one_seed_run_keeps_the_previous_seeds_table(tmp_path, monkeypatch):
    """Taking a one-seed report over a multi-seed one keeps the latter's seeds table (shown
    with its own stamp); a later multi-seed report supersedes it."""
    import copy
    import json

    generate = generator_in(tmp_path, monkeypatch)
    docs, data = tmp_path / "docs", tmp_path / "docs" / "data"
    several = json.load(open(data / "demo_report.json"))
    several.update(
        seeds={
            "count": 3,
            "rows": [{"domain": "detection", "method": "Baseline", "values": {"AP": [1.0, 2.0, 3.0]}}],
        }
    )
    one = copy.deepcopy(several)
    one["seeds"] = {"count": 1, "rows": []}
    for name, report in (("several.json", several), ("one.json", one)):
        (tmp_path / name).write_text(json.dumps(report))
    assert generate.main(["--demo", str(tmp_path / "several.json")]) == 0
    assert generate.main(["--demo", str(tmp_path / "one.json")]) == 0
    assert json.load(open(data / "demo_seeds_report.json"))["seeds"]["count"] == 3
    page = (docs / "results.md").read_text()
    assert (
        "## Over 3 training seeds" in page
        and "This run trained one seed" in page
        and "2.0000 ± 1.0000" in page
    )
    assert generate.main(["--demo", str(tmp_path / "several.json")]) == 0
    assert not (data / "demo_seeds_report.json").exists()
    assert "This run trained one seed" not in (docs / "results.md").read_text()


def test_the_study_table_is_generated_from_its_report(tmp_path, monkeypatch):
    """--study takes a success-study report.json (refusing one without its run stamp or from a
    --tiny run) and writes the selected rows, the choice and its comparisons into the study
    README between its markers."""
    import json

    generate = generator_in(tmp_path, monkeypatch)

    def row(name, map_name, auroc, ece_shifted):
        split = {"AUROC": auroc, "AURC": 1 - auroc, "ECE": 0.01, "mIoU": 90.0}
        shifted = {"AUROC": auroc - 0.2, "AURC": 0.1, "ECE": ece_shifted}
        return {"name": name, "map": map_name, "calib_select": split, "val": split, "val_shifted": shifted}

    rows = [
        row("STL", "softmax", 0.95, 0.07),
        row("STL", "scaled", 0.95, 0.11),
        row("balanced max-softmax", "softmax", 0.96, 0.2),
        row("balanced live", "fusion", 0.97, 0.3),
    ]
    run = {
        "command": "python experiments/success_ablation/success_ablation.py",
        "date": "2026-12-03 15:40 UTC",
    }
    run.update(
        machine={"cpu": "a CPU", "cores": 2, "memory_gib": 8.0, "gpu": None, "torch": "2"}, commit="0" * 12
    )
    report = {"rows": rows, "chosen": {"name": "balanced live", "map": "fusion"}, "run": run}
    path = tmp_path / "report.json"
    for broken in (
        {k: v for k, v in report.items() if k != "run"},
        {**report, "run": {**run, "command": run["command"] + " --tiny"}},
    ):
        path.write_text(json.dumps(broken))
        with pytest.raises(SystemExit):
            generate.main(["--study", str(path)])
    path.write_text(json.dumps(report))
    assert generate.main(["--study", str(path)]) == 0
    text = (tmp_path / "study.md").read_text()
    block = text[text.index(generate.STUDY_MARKS[0]) : text.index(generate.STUDY_MARKS[1])]
    assert "| **balanced live (chosen)** | fusion | 0.9700 |" in block
    assert "beats its own network's max softmax on AUROC (0.9700 vs 0.9600)" in block
    assert "against STL's 0.0700 (goal: below STL's: not met)" in block
    assert "python experiments/success_ablation/success_ablation.py" in block
