"""The framework-free pieces import neither detectron2 nor the OpenMMLab stack."""

import subprocess
import sys
from pathlib import Path

FRAMEWORKS = ("detectron2", "mmseg", "mmcv", "mmengine")
MODULES = (
    "conf_plugins.losses",
    "conf_plugins.calibration",
    "conf_plugins.calibration.gradient_metrics",
    "conf_plugins.calibration.meta_classifier",
    "conf_plugins.calibration.score_calibrators",
    "conf_plugins.calibration.sampling",
    "conf_plugins.calibration.detection_matching",
    "conf_plugins.calibration.class_sets",
    "conf_plugins.calibration.conformal",
    "conf_plugins.cli",
    "conf_plugins.files",
    "tests.fixtures",
)
TOOLS = ("kendall_toy",)  # loaded from their files (tests.fixtures.load_tool)


def test_no_framework_is_imported():
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in MODULES)
        + "".join(f"tests.fixtures.load_tool({t!r})\n" for t in TOOLS)
        + f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FRAMEWORKS!r}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.stdout.strip() == "[]", out.stdout
