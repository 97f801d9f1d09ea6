#!/usr/bin/env python
"""Print the versions of the stack and whether detectron2's compiled ops are present.

make versions            # or: .venv/bin/python tools/collect_env.py
"""

import importlib
import importlib.metadata
import json
import sys


def stack_versions() -> dict:
    """name -> version string (or 'not installed') for every framework we plug into."""
    versions = {"python": sys.version.split()[0]}
    for name in ("torch", "torchvision", "detectron2", "mmcv", "mmengine", "mmseg", "numpy", "PIL"):
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
    versions["detectron2 source"] = installed_from("detectron2")
    try:
        from detectron2 import _C

        versions["detectron2 compiled ops"] = f"present ({len(dir(_C))} symbols in {_C.__file__})"
    except ImportError as e:
        versions["detectron2 compiled ops"] = f"missing ({e})"
    return versions


def installed_from(dist: str) -> str:
    """Where pip installed ``dist`` from (its PEP 610 ``direct_url.json``): the git commit,
    or the archive and its sha256; 'a package index' when pip recorded no direct url."""
    try:
        text = importlib.metadata.distribution(dist).read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"
    if not text:
        return "a package index"
    info = json.loads(text)
    if "vcs_info" in info:
        return f"{info['url']} @ {info['vcs_info'].get('commit_id', '?')}"
    digest = info.get("archive_info", {}).get("hash", "")
    return f"{info['url']} ({digest})" if digest else info["url"]


def main() -> None:
    for name, version in stack_versions().items():
        print(f"{name:<24} {version}")


if __name__ == "__main__":
    main()
