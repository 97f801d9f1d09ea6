"""Both frameworks and conf_plugins import in one process, and the version command works."""
import subprocess
import sys


def test_both_frameworks_import_in_one_process():
    import detectron2.modeling  # noqa: F401
    import mmseg.models  # noqa: F401

    import conf_plugins

    assert conf_plugins.__version__


def test_collect_env_reports_every_framework():
    out = subprocess.run([sys.executable, "tools/collect_env.py"], capture_output=True,
                         text=True, check=True).stdout
    report = {line[:24].strip(): line[25:] for line in out.splitlines()}
    for name in ("torch", "torchvision", "detectron2", "mmcv", "mmengine", "mmseg"):
        assert report[name][0].isdigit(), out
    assert report["mmcv compiled ops"] == "present", out
    assert report["detectron2 compiled ops"].split()[0] in ("present", "placeholder"), out
