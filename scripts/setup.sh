#!/usr/bin/env bash
# Idempotent install of fastres into ./.venv: the system headers ffcv compiles against,
# a virtualenv, and fastres with its dev extra (ffcv, submitit, pytest, pytest-benchmark, ruff).
# Re-running it does nothing when the environment is already up to date.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
VENV=${FASTRES_VENV:-.venv}
say() { printf '[setup] %s\n' "$*"; }

# System packages: ffcv builds from source against OpenCV and libjpeg-turbo.
if command -v dpkg-query >/dev/null 2>&1; then
  want=(libopencv-dev libturbojpeg0-dev pkg-config g++)
  "$PYTHON" -c 'import ensurepip' 2>/dev/null || want+=(python3-venv)
  "$PYTHON" -c 'import sysconfig,os,sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
    || want+=(python3-dev)
  missing=()
  for pkg in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    say "installing system packages: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
else
  say "not a Debian/Ubuntu system: make sure OpenCV and libjpeg-turbo development headers are installed for ffcv"
fi

if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi

stamp="$VENV/.fastres-install"
want_stamp=$(cat pyproject.toml setup.cfg | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want_stamp" ] && "$VENV/bin/python" -c 'import fastres, ffcv.loader' 2>/dev/null; then
  say "environment up to date ($VENV)"
else
  say "installing fastres and its dependencies into $VENV (torch is large: the first time takes minutes)"
  "$VENV/bin/python" -m pip install -q -e '.[dev]'
  "$VENV/bin/python" -c 'import fastres, ffcv.loader'
  echo "$want_stamp" >"$stamp"
  say "installed: $("$VENV/bin/python" -c 'import torch, fastres; print("fastres", fastres.__version__, "torch", torch.__version__)')"
fi
