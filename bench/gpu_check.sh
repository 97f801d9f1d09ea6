#!/usr/bin/env bash
# The GPU path, where a CUDA GPU exists (not run by CI): CUDA builds of detectron2's and mmcv's
# ops, the tests marked gpu, and the benches' GPU ratios as JSON for docs/generate.py --bench.
#   bash bench/gpu_check.sh            # after make env, on a machine with a GPU
# Writes output/bench/gpu_*.json; then: python docs/generate.py --bench output/bench/gpu_*.json
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU here'; print(torch.cuda.get_device_name(0))"
echo "[gpu] CUDA ops of detectron2 and mmcv (rebuilt with CUDA when the cached build has none)"
$PY - <<'PY' || FORCE_CUDA=1 MMCV_WITH_OPS=1 $PY -m pip install -q --no-build-isolation --no-deps --force-reinstall \
    "$(grep -E '^mmcv==' requirements/pins.txt)" "$(sed -n 's/^archive=//p' requirements/detectron2.txt)"
import torch
from detectron2 import _C
from mmcv.ops import nms
boxes = torch.rand(10, 4, device="cuda"); boxes[:, 2:] += boxes[:, :2]
nms(boxes, torch.rand(10, device="cuda"), 0.5)
assert _C.get_cuda_version() > 0, "detectron2 built without CUDA"
PY
echo "[gpu] tests marked gpu"
$PY -m pytest -q -m gpu tests
mkdir -p output/bench
echo "[gpu] MC-10 / single pass (mmseg), DDN / plain fine-tuning (detectron2), on CUDA"
$PY bench/seg_mc_dropout_cost.py --device cuda --size 512 1024 --json output/bench/gpu_seg_mc_dropout_cost.json
$PY bench/ddn_speed.py --device cuda --size 800 --images 2 --samples 5 --json output/bench/gpu_ddn_speed.json
echo "[gpu] done: python docs/generate.py --bench output/bench/gpu_*.json"
