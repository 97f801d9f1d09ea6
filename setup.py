"""conf_plugins: calibrated confidence for detectron2 and mmsegmentation 1.x.

Versions are pinned in one place, requirements/pins.txt; the extras below name the packages
and take their bounds from that file, so `pip install -e .[d2,mmseg,dev]` inside an
environment built by tools/env/bootstrap.sh changes nothing.
"""

import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def pinned(*names):
    """The pins of `names` from requirements/pins.txt (the single source of versions)."""
    pins = {}
    with open(os.path.join(HERE, "requirements", "pins.txt")) as f:
        for line in f:
            m = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line.strip())
            if m:
                pins[m.group(1).lower()] = line.strip()
    return [pins[n.lower()] for n in names]


setup(
    name="conf_plugins",
    version="0.1.0",
    description="Calibrated confidence for object detection and semantic segmentation "
    "(detectron2 and mmsegmentation plugins)",
    packages=find_packages(include=["conf_plugins", "conf_plugins.*"]),
    python_requires=">=3.10",
    license="Apache-2.0",
    install_requires=pinned("torch", "numpy", "matplotlib"),
    extras_require={
        # detectron2 itself is installed from source (or by tools/env/bootstrap.sh).
        "d2": pinned("torchvision", "pillow", "fvcore", "iopath", "pycocotools", "opencv-python"),
        "mmseg": pinned("mmcv", "mmengine", "mmsegmentation", "ftfy", "regex"),
        "dev": pinned("pytest", "scikit-learn", "torchmetrics", "scipy"),
    },
)
