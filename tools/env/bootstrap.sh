#!/usr/bin/env bash
# Builds the project's environment once and links it as ./.venv; later runs only link it.
#
# The venv is cached outside the checkout under a key hashed from requirements/pins.txt and
# the files that build it, so every clone (and CI's fresh clone) on this machine reuses it,
# and changing a pin builds a new one. Fresh machine: ~20 min (mmcv compiles ~16 min on 2
# cores); cached: a few seconds. Override the cache folder with CONF_PLUGINS_CACHE.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
pins="$root/requirements/pins.txt"
key=$(cat "$pins" "$root/tools/env/bootstrap.sh" "$root/tools/env/detectron2_wheel.py" \
          "$root/conf_plugins/compat/detectron2_ops_placeholder.py" | sha256sum | cut -c1-16)
cache="${CONF_PLUGINS_CACHE:-$HOME/.cache/conf_plugins}"
venv="$cache/venv-$key"
mkdir -p "$cache"
exec 9>"$cache/lock-$key"
flock 9   # two clones building at once wait for each other instead of racing

pin() { grep -E "^$1==" "$pins"; }

if [ ! -f "$venv/.complete" ]; then
  echo "[bootstrap] building environment $venv (first use; mmcv compiles for ~16 min)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  pip=("$venv/bin/python" -m pip)
  # An empty find-links folder: this machine's pip config points at a CPU-only torch 2.13.0
  # wheel that would shadow the CUDA build torchvision's compiled ops need.
  empty_links=$(mktemp -d)
  export PIP_FIND_LINKS="$empty_links"
  # -c: every dependency pulled in on the way resolves to its pin too.
  pip+=(install -q -c "$pins")
  "${pip[@]}" "$(pin setuptools)" wheel ninja "$(pin numpy)"
  "${pip[@]}" "$(pin torch)" "$(pin torchvision)"
  echo "[bootstrap] mmcv with compiled CPU ops (pip reuses its cached wheel when it has one)"
  MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="${MAX_JOBS:-2}" \
    "${pip[@]}" --no-build-isolation "$(pin mmcv)"
  echo "[bootstrap] detectron2 $(pin pb1-detectron2 | cut -d= -f3) (pure-Python package)"
  d2_wheel=$("$venv/bin/python" "$root/tools/env/detectron2_wheel.py" \
               "$(pin pb1-detectron2)" "$cache/wheels")
  "${pip[@]}" --no-deps "$d2_wheel"
  echo "[bootstrap] remaining pinned packages"
  grep -vE '^(pb1-detectron2)==' "$pins" > "$venv/requirements.txt"
  "${pip[@]}" -r "$venv/requirements.txt"
  "$venv/bin/python" -c "import torch, torchvision.ops, mmcv.ops, mmseg.models, detectron2.modeling"
  touch "$venv/.complete"
fi
ln -sfn "$venv" "$root/.venv"
