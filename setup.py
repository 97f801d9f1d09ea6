"""conf_plugins: calibrated confidence for detectron2 and mmsegmentation 1.x.

Versions are pinned in one place, requirements/pins.txt; the extras below name the packages
and take their bounds from that file, so `pip install -e .[d2,mmseg,dev]` inside an
environment built by tools/env/bootstrap.sh changes nothing.
"""

import hashlib
import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
KERNEL_SOURCE = os.path.join("conf_plugins", "csrc", "pixel_confidence.cpp")


def kernel_extension():
    """The fused pixel-confidence kernel (C++, torch's cpp_extension, AVX2), stamped with the
    SHA-256 of its source so that a stale build is detected and not used. Built by
    tools/env/kernel.sh (``make env``), which sets CONF_PLUGINS_BUILD_KERNEL=1; without it
    conf_plugins falls back to the torch path."""
    if os.environ.get("CONF_PLUGINS_BUILD_KERNEL") != "1":
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        return [], {}
    with open(os.path.join(HERE, KERNEL_SOURCE), "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    # ATen's vector width for the CPU that builds (and runs) it: AVX-512 where torch uses it
    import torch

    capability = "AVX512" if torch.backends.cpu.get_cpu_capability() == "AVX512" else "AVX2"
    isa = ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq"] if capability == "AVX512" else ["-mavx2"]
    flags = [
        "-O3",
        *isa,
        "-mfma",
        f"-DCPU_CAPABILITY={capability}",
        f"-DCPU_CAPABILITY_{capability}",
        f'-DBUILT_FOR="{capability}"',
        f'-DSOURCE_SHA="{sha}"',
    ]
    ext = CppExtension("conf_plugins._pixel_kernel", [KERNEL_SOURCE], extra_compile_args=flags)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


EXT_MODULES, CMDCLASS = kernel_extension()


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
    ext_modules=EXT_MODULES,
    cmdclass=CMDCLASS,
    license="Apache-2.0",
    install_requires=pinned("torch", "numpy", "matplotlib"),
    extras_require={
        # detectron2 itself is installed from source (or by tools/env/bootstrap.sh).
        "d2": pinned("torchvision", "pillow", "fvcore", "iopath", "pycocotools", "opencv-python"),
        "mmseg": pinned("mmcv", "mmengine", "mmsegmentation", "ftfy", "regex"),
        "dev": pinned("pytest", "scikit-learn", "torchmetrics", "scipy"),
    },
)
