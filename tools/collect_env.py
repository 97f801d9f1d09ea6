#!/usr/bin/env python
"""Print the versions of the stack and whether detectron2's compiled ops are present.

    make versions            # or: .venv/bin/python tools/collect_env.py
"""
import importlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout


def stack_versions() -> dict:
    """name -> version string (or 'not installed') for every framework we plug into."""
    versions = {"python": sys.version.split()[0]}
    for name in ("torch", "torchvision", "detectron2", "mmcv", "mmengine", "mmseg", "numpy",
                 "PIL"):
        try:
            versions[name] = importlib.import_module(name).__version__
        except ImportError as e:
            versions[name] = f"not installed ({e})"
    try:
        import torch

        versions["torch CUDA build"] = str(torch.version.cuda)
        versions["CUDA available"] = str(torch.cuda.is_available())
        import mmcv.ops  # noqa: F401  (loads mmcv._ext, the compiled ops)

        versions["mmcv compiled ops"] = "present"
    except ImportError as e:
        versions["mmcv compiled ops"] = f"missing ({e})"
    try:
        from conf_plugins.compat import detectron2_compiled_ops_available

        versions["detectron2 compiled ops"] = (
            "present" if detectron2_compiled_ops_available()
            else "placeholder (pure-Python detectron2: no rotated boxes, deformable conv, "
                 "fast COCO eval)")
    except ImportError as e:
        versions["detectron2 compiled ops"] = f"unknown ({e})"
    return versions


def main() -> None:
    for name, version in stack_versions().items():
        print(f"{name:<24} {version}")


if __name__ == "__main__":
    main()
