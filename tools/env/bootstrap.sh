#!/usr/bin/env bash
# Builds the project's environment and links it to this checkout as ./.venv.
#
# Two layers:
#  * a base venv with the whole pinned stack (torch, mmcv compiled with its ops, mmseg,
#    official detectron2 built from source), cached outside the checkout under a key hashed
#    from requirements/ and this script: every clone on the machine (CI's fresh one too)
#    shares it, and changing a pin or the detectron2 commit builds a new one;
#  * ./.venv, a small venv of this checkout: a .pth file puts the base venv's site-packages
#    on its path, and conf_plugins is pip-installed into it in editable mode, so
#    `.venv/bin/python` imports this checkout's code from any working directory.
# Fresh machine with an empty pip cache: ~15 min (mmcv's ops compile ~11 min, detectron2's
# ~2 min, on 2 cores); base cached: a few seconds. Cache folder: CONF_PLUGINS_CACHE.
# detectron2's source: requirements/detectron2.txt, or DETECTRON2_SOURCE to override.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
pins="$root/requirements/pins.txt"
d2_spec="$root/requirements/detectron2.txt"
key=$(cat "$pins" "$d2_spec" "$root/tools/env/bootstrap.sh" | sha256sum | cut -c1-16)
cache="${CONF_PLUGINS_CACHE:-$HOME/.cache/conf_plugins}"
base="$cache/base-$key"
mkdir -p "$cache"
exec 9>"$cache/lock-$key"
flock 9   # two clones building at once wait for each other instead of racing

pin() { grep -E "^$1==" "$pins"; }
d2_field() { sed -n "s/^$1=//p" "$d2_spec"; }

detectron2_source() {
  # The one setting: DETECTRON2_SOURCE, else the archive beside the checkout, else the url.
  if [ -n "${DETECTRON2_SOURCE:-}" ]; then echo "$DETECTRON2_SOURCE"; return; fi
  local archive="$root/$(d2_field archive)"
  if [ -f "$archive" ]; then
    echo "$(d2_field sha256)  $archive" | sha256sum --check --status || {
      echo "[bootstrap] $archive does not match the sha256 in $d2_spec" >&2; exit 1; }
    echo "$archive"
  else
    d2_field url
  fi
}

if [ ! -f "$base/.complete" ]; then
  echo "[bootstrap] building the base environment $base (first use on this machine)"
  rm -rf "$base"
  python3 -m venv "$base"
  pip=("$base/bin/python" -m pip)
  # An empty find-links folder: this machine's pip config points at a CPU-only torch 2.13.0
  # wheel that would shadow the CUDA build torchvision's compiled ops need.
  empty_links=$(mktemp -d)
  export PIP_FIND_LINKS="$empty_links"
  pip+=(install -q -c "$pins")
  "${pip[@]}" "$(pin setuptools)" wheel ninja "$(pin numpy)"
  "${pip[@]}" "$(pin torch)" "$(pin torchvision)"
  export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
  echo "[bootstrap] mmcv with compiled ops (pip reuses its cached wheel when it has one; ~11 min if not)"
  MMCV_WITH_OPS=1 "${pip[@]}" --no-build-isolation "$(pin mmcv)"
  src=$(detectron2_source)
  echo "[bootstrap] official detectron2 $(d2_field commit | cut -c1-8) from source with its compiled ops: $src"
  "${pip[@]}" --no-build-isolation "$src"
  echo "[bootstrap] remaining pinned packages"
  "${pip[@]}" -r "$pins"
  "$base/bin/python" -c "import torch, torchvision.ops, mmcv.ops, mmseg.models, detectron2._C, detectron2.modeling"
  touch "$base/.complete"
fi

# The checkout's own venv: the base stack by a .pth file, conf_plugins installed editable.
venv="$root/.venv"
[ -L "$venv" ] && rm -f "$venv"   # the layout before this one linked the cached venv itself
if [ "$(cat "$venv/.base" 2>/dev/null)" != "$base" ] || [ ! -x "$venv/bin/python" ]; then
  rm -rf "$venv"
  python3 -m venv --without-pip "$venv"
  site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  base_site=$("$base/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  echo "import site; site.addsitedir('$base_site')" > "$site/conf_plugins_base_env.pth"
  PIP_FIND_LINKS="" "$venv/bin/python" -m pip install -q --no-deps --no-build-isolation \
    --disable-pip-version-check -e "$root"
  echo "$base" > "$venv/.base"
fi
