"""The README cannot drift from the code (issue 13.3): its Python snippets run as written,
its config snippet parses and builds on top of a stock mmseg config, the demo block's
commands run as written one after the other (on tiny generated data, with only a few
iterations appended: the overrides of ``tools/run_demo.py --tiny``), and every command of its
bash blocks names an existing tool, make target and config, with flags the tool accepts.
(Commands that train on COCO / Cityscapes or on 8 GPUs are checked, not run.)"""
import functools
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from tests.fixtures import ROOT, load_tool

README = open(os.path.join(ROOT, "README.md")).read()
BLOCKS = re.findall(r"^```(\w*)\n(.*?)^```", README, flags=re.S | re.M)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]
CONFIG_SNIPPETS = [code for code in PYTHON if "custom_imports" in code]
SCRIPT_SNIPPETS = [code for code in PYTHON if "custom_imports" not in code]


def commands(blocks=None):
    """Every command line of the bash blocks (continuations joined, comments dropped)."""
    out = []
    for code in blocks or [code for lang, code in BLOCKS if lang == "bash"]:
        for line in code.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].split(" # ")[0].strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


DEMO_BLOCK = [code for lang, code in BLOCKS
              if lang == "bash" and "configs/demo/teacher.yaml OUTPUT_DIR" in code]


def test_the_readme_has_what_this_test_checks():
    assert len(SCRIPT_SNIPPETS) >= 1 and len(CONFIG_SNIPPETS) == 1 and len(commands()) >= 15


@pytest.mark.parametrize("code", SCRIPT_SNIPPETS, ids=lambda c: c.splitlines()[0][:40])
def test_python_snippet_runs_as_written(code, tmp_path):
    from conf_plugins.detectron2 import generate_demo_detection

    os.symlink(os.path.join(ROOT, "configs"), tmp_path / "configs")
    generate_demo_detection(str(tmp_path / "datasets" / "conf_demo_det"),
                            {"train": 2, "val": 2}, image_size=64)  # what make demo leaves
    script = tmp_path / "snippet.py"
    script.write_text(code)
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                            text=True, timeout=600,
                            env={**os.environ, "DETECTRON2_DATASETS": "datasets"})
    assert result.returncode == 0, result.stderr[-3000:]


def tiny(tokens):
    """A README command with run_demo's --tiny overrides appended (and the checkpoint names
    of a 4-iteration run): everything else exactly as written."""
    run_demo = load_tool("run_demo")
    tokens = [t.replace("iter_600", "iter_4") for t in tokens]
    if tokens[0] in ("tools/train_net.py", "tools/fit_detection_calibration.py"):
        return tokens + run_demo.TINY_DET
    if tokens[0] == "tools/seg_train.py":
        snapshot = run_demo.TINY_SNAPSHOT if "mtl" in tokens[1] else []
        return tokens + ["--cfg-options", *run_demo.TINY_SEG, *snapshot]
    return tokens


def test_demo_commands_run_as_written(tmp_path):
    from conf_plugins.detectron2 import generate_demo_detection
    from conf_plugins.mmseg.demo_data import generate_demo_segmentation

    assert len(DEMO_BLOCK) == 1
    os.symlink(os.path.join(ROOT, "configs"), tmp_path / "configs")
    generate_demo_detection(str(tmp_path / "datasets" / "conf_demo_det"),
                            {"train": 4, "calib": 2, "val": 2})
    generate_demo_segmentation(str(tmp_path / "datasets" / "conf_demo_seg"),
                               load_tool("run_demo").TINY_SEG_DATA)
    env = {**os.environ, "DETECTRON2_DATASETS": "datasets"}
    lines = commands(DEMO_BLOCK)
    assert len(lines) == 11
    for line in lines:
        tokens = tiny(shlex.split(line))
        result = subprocess.run([sys.executable, os.path.join(ROOT, tokens[0])] + tokens[1:],
                                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"{line}\n{result.stderr[-3000:]}"
    seg = tmp_path / "output" / "demo" / "seg"
    assert (seg / "stl" / "temperature.json").exists() and (seg / "mtl" / "iter_4_bayes.pth").exists()
    det = tmp_path / "output" / "demo" / "det"
    assert (det / "ddn" / "model_final.pth").exists()
    assert "LaECE@IoU0.5" in json.load(open(det / "baseline_temperature" / "eval_results.json"))[
        "calibration"]
    assert "calib/ECE" in result.stdout + result.stderr  # the last one: the MTL evaluation


def test_config_snippet_builds_on_a_stock_config(tmp_path):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    path = tmp_path / "my_config.py"
    path.write_text("_base_ = ['mmseg::fcn/fcn_r50-d8_4xb2-80k_cityscapes-512x1024.py']\n"
                    + CONFIG_SNIPPETS[0])
    cfg = Config.fromfile(str(path))
    init_default_scope("mmseg")
    import conf_plugins.mmseg  # noqa: F401  (what custom_imports does)

    model = MODELS.build(cfg.model)
    assert type(model).__name__ == "SuccessEncoderDecoder"
    assert cfg.val_evaluator[1].confidence == "success_score"  # exists during training
    assert cfg.calib_dataloader.dataset.pipeline == cfg.test_pipeline


@functools.lru_cache(maxsize=None)
def tool_help(script):
    result = subprocess.run([sys.executable, os.path.join(ROOT, script), "--help"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, f"{script} --help failed: {result.stderr[-2000:]}"
    return result.stdout


def expand_braces(token):
    match = re.search(r"\{([^}]*)\}", token)
    if not match:
        return [token]
    return [token[:match.start()] + part + token[match.end():] for part in match.group(1).split(",")]


@pytest.mark.parametrize("command", commands())
def test_command_names_existing_tools_configs_and_flags(command):
    tokens = shlex.split(command)
    if tokens[0] == "make":
        targets = re.findall(r"^([a-z]+):", open(os.path.join(ROOT, "Makefile")).read(), re.M)
        assert all(t in targets for t in tokens[1:] if "=" not in t), command
        return
    scripts = [t for t in tokens if re.match(r"^(\./)?tools/.*\.py$", t)]
    assert scripts, f"no tools/ script in: {command}"
    script = scripts[0].lstrip("./")
    assert os.path.isfile(os.path.join(ROOT, script)), script
    help_text = tool_help(script)
    for flag in (t.split("=")[0] for t in tokens if t.startswith("--")):
        if flag in ("--nproc_per_node", "--standalone"):  # torchrun's own
            continue
        assert flag in help_text, f"{script} does not accept {flag}"
    for token in tokens:
        for path in expand_braces(token):
            if path.startswith("configs/"):
                assert os.path.isfile(os.path.join(ROOT, path)), path
