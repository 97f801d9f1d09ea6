#!/usr/bin/env bash
# Builds the fused pixel-confidence kernel (conf_plugins/csrc, C++ with torch's cpp_extension,
# ~1 min on 2 cores) into this checkout's ./.venv (made by bootstrap.sh), again whenever its
# source changes. Without it conf_plugins warns once and takes the torch path (same values).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="$root/.venv"
kernel=$(cat "$root/conf_plugins/csrc/pixel_confidence.cpp" "$root/setup.py" | sha256sum | cut -c1-64)  # source + flags
if [ "$(cat "$venv/.kernel" 2>/dev/null)" != "$kernel" ]; then
  echo "[kernel] building the fused pixel-confidence kernel"
  (cd "$root" && CONF_PLUGINS_BUILD_KERNEL=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$venv/bin/python" setup.py -q build_ext --inplace >/dev/null)
  "$venv/bin/python" -c "import torch; from conf_plugins import _pixel_kernel"
  echo "$kernel" > "$venv/.kernel"
fi
