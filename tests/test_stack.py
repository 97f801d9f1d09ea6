"""Both frameworks and conf_plugins import in one process, and the version command works."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_both_frameworks_import_in_one_process():
    import detectron2.modeling  # noqa: F401
    import mmseg.models  # noqa: F401

    import conf_plugins

    assert conf_plugins.__version__


def test_collect_env_reports_every_framework():
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "collect_env.py")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    report = {line[:24].strip(): line[25:] for line in out.splitlines()}
    for name in ("torch", "torchvision", "detectron2", "mmcv", "mmengine", "mmseg"):
        assert report[name][0].isdigit(), out
    assert report["mmcv compiled ops"] == "present", out
    assert report["detectron2 compiled ops"].startswith("present"), out
    # official detectron2 at the pinned commit: the git commit or the archive's sha256
    with open(os.path.join(ROOT, "requirements", "detectron2.txt")) as f:
        pinned = dict(line.strip().split("=", 1) for line in f if line[0].isalpha())
    source = report["detectron2 source"]
    assert pinned["commit"] in source or pinned["sha256"] in source, out


def test_conf_plugins_imports_from_any_directory(tmp_path):
    """Installed (editable) into the environment: no sys.path edit, no PYTHONPATH needed."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", "import conf_plugins; print(conf_plugins.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == os.path.join(ROOT, "conf_plugins", "__init__.py")
