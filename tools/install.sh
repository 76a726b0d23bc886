#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment in .venv/ and installs everything pinned:
# torch + torchvision, detectron2, the libraries from requirements/lock.txt, lvis, the reference
# packages used by the parity tests, and hieradet itself (editable).
#
# A second run compares a stamp of its inputs (this script, the lock file, setup.py, the detectron2
# choice) with the one the last successful run left, and returns in about a second when they match.
#
# Environment:
#   PYTHON                interpreter to build the venv from (default: python3; needs >= 3.10)
#   HIERADET_VENV         where the venv goes (default: <checkout>/.venv)
#   HIERADET_DETECTRON2   which detectron2 to install:
#       sal       (default) the `sal-detectron2==0.7.2` wheel from PyPI, a redistribution of upstream
#                 detectron2 main (2024) that needs PyPI only; its pure-Python package is copied into the
#                 venv. Its compiled `_C` extension (built for CPython 3.10) is removed, so every Python
#                 version runs the same pure-Python/torchvision code paths.
#       upstream  `pip install git+https://github.com/facebookresearch/detectron2.git` (needs GitHub
#                 access and a compiler; builds detectron2's C++/CUDA ops).
#       <path>    a local detectron2 checkout, installed with `pip install -e <path>`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${HIERADET_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
D2="${HIERADET_DETECTRON2:-sal}"
SAL_D2_VERSION="0.7.2"
LVIS_VERSION="0.5.3"
SAM2_VERSION="1.1.0"
UPSTREAM_D2="git+https://github.com/facebookresearch/detectron2.git"

log() { printf '[install] %s\n' "$*" >&2; }

stamp_inputs() {
  cat "$ROOT/tools/install.sh" "$ROOT/requirements/lock.txt" "$ROOT/setup.py"
  echo "detectron2=$D2"
}

STAMP_FILE="$VENV/.hieradet-install-stamp"
want_stamp="$(stamp_inputs | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP_FILE" && "$(cat "$STAMP_FILE")" == "$want_stamp" && -x "$VENV/bin/python" ]]; then
  log "environment $VENV is up to date"
  exit 0
fi

start=$(date +%s)
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
  log "error: $PY is missing or older than Python 3.10; set PYTHON=/path/to/python3.10+"
  exit 1
fi
if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip --disable-pip-version-check)

log "installing pinned requirements (requirements/lock.txt)"
"${PIP[@]}" install -q --upgrade "pip==25.1.1"
"${PIP[@]}" install -q -r "$ROOT/requirements/lock.txt"

site="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

case "$D2" in
  sal)
    log "installing detectron2 from sal-detectron2==$SAL_D2_VERSION (pure Python)"
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    "${PIP[@]}" install -q --no-deps --only-binary=:all: --python-version 3.10 \
      --target "$tmp" "sal-detectron2==$SAL_D2_VERSION"
    rm -rf "$site/detectron2"
    cp -r "$tmp/detectron2" "$site/detectron2"
    rm -f "$site"/detectron2/_C*.so
    ;;
  upstream)
    log "installing upstream detectron2 from $UPSTREAM_D2"
    "${PIP[@]}" install -q --no-build-isolation "$UPSTREAM_D2"
    ;;
  *)
    if [[ ! -d "$D2" ]]; then
      log "error: HIERADET_DETECTRON2='$D2' is neither 'sal', 'upstream' nor a detectron2 checkout"
      exit 1
    fi
    log "installing detectron2 from the checkout $D2"
    "${PIP[@]}" install -q --no-build-isolation -e "$D2"
    ;;
esac

log "installing lvis==$LVIS_VERSION (without its opencv-python pin; opencv-python-headless is in the lock)"
"${PIP[@]}" install -q --no-deps "lvis==$LVIS_VERSION"

log "installing sam2==$SAM2_VERSION without its CUDA extension (parity tests only)"
SAM2_BUILD_CUDA=0 "${PIP[@]}" install -q --no-deps --no-build-isolation "sam2==$SAM2_VERSION"

log "installing hieradet (editable)"
"${PIP[@]}" install -q --no-deps --no-build-isolation -e "$ROOT"

"$VPY" -c 'import torch, torchvision, detectron2, lvis, hieradet; print("[install] torch", torch.__version__, "| torchvision", torchvision.__version__, "| detectron2", detectron2.__version__, "| hieradet", hieradet.__version__)' >&2

echo "$want_stamp" > "$STAMP_FILE"
log "done in $(( $(date +%s) - start )) s"
