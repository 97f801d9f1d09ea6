"""Build a pure-Python detectron2 wheel from PyPI's ``pb1-detectron2`` source distribution.

Official detectron2 is built from its GitHub source, which this machine cannot reach. PyPI's
``pb1-detectron2==0.6`` carries the official v0.6 ``detectron2/`` Python package file for
file, but not the C++/CUDA sources, so its own ``setup.py`` cannot build. This script
repackages that Python package as a wheel named ``detectron2`` and adds
``detectron2/_C.py`` from ``conf_plugins/compat/detectron2_ops_placeholder.py``: a stand-in
for the compiled-ops module that answers ``collect_env``'s version queries and raises a
clear error naming any compiled op that is used (rotated boxes, deformable conv, fast COCO
eval). Faster R-CNN needs none of them (ROIAlign and NMS come from torchvision).

Usage: python detectron2_wheel.py pb1-detectron2==0.6 OUT_DIR   (prints the wheel's path)
"""
import glob
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

SETUP_PY = """
from setuptools import find_packages, setup
setup(
    name="detectron2",
    version="{version}",
    description="detectron2 {version} Python package (compiled ops replaced by a placeholder)",
    packages=find_packages(include=["detectron2", "detectron2.*"]),
    package_data={{"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]}},
    python_requires=">=3.7",
)
"""


def main(requirement: str, out_dir: str) -> None:
    version = requirement.split("==")[1]
    os.makedirs(out_dir, exist_ok=True)
    cached = glob.glob(os.path.join(out_dir, f"detectron2-{version}-*.whl"))
    placeholder = os.path.join(
        os.path.dirname(__file__), "..", "..", "conf_plugins", "compat",
        "detectron2_ops_placeholder.py")
    with tempfile.TemporaryDirectory() as tmp:
        # --no-build-isolation: its setup.py imports torch just to write metadata.
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary",
             ":all:", "--no-build-isolation", requirement, "-d", tmp],
            check=True, stdout=sys.stderr)
        (sdist,) = glob.glob(os.path.join(tmp, "*.tar.gz"))
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        (src,) = glob.glob(os.path.join(tmp, "*", "detectron2"))
        build = os.path.join(tmp, "build")
        shutil.copytree(src, os.path.join(build, "detectron2"))
        shutil.copy(placeholder, os.path.join(build, "detectron2", "_C.py"))
        with open(os.path.join(build, "setup.py"), "w") as f:
            f.write(SETUP_PY.format(version=version))
        for old in cached:
            os.remove(old)
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
             build, "-w", out_dir], check=True, stdout=sys.stderr)
    (wheel,) = glob.glob(os.path.join(out_dir, f"detectron2-{version}-*.whl"))
    print(wheel)


if __name__ == "__main__":
    main(*sys.argv[1:])
