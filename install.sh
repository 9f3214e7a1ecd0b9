#!/usr/bin/env bash
# Install mlbox into ./.venv (idempotent: rerun it any time).
#
#   ./install.sh            runtime install
#   ./install.sh --dev      plus the test tools
#   ./install.sh --cpu      force the CPU builds even when an NVIDIA GPU is present
#   ./install.sh --gpu      force the CUDA builds
#
# CPU or GPU is chosen by whether `nvidia-smi -L` lists a GPU. CPU installs never pull
# CUDA payloads: they use `xgboost-cpu`, `onnxruntime` and the CPU build of torch 2.13.0.
# GPU installs use xgboost, `onnxruntime-gpu` (models are served on CUDA) and CUDA torch.
# The two onnxruntime wheels write the same `onnxruntime` package: one is always removed
# before the other is installed, so a venv never holds both.
set -euo pipefail
cd "$(dirname "$0")"

dev=0
mode=auto
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1 ;;
    --cpu) mode=cpu ;;
    --gpu) mode=gpu ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $arg (use --dev, --cpu, --gpu)" >&2; exit 2 ;;
  esac
done

say() { printf '\033[1mmlbox install:\033[0m %s\n' "$*"; }
die() { printf '\033[31mmlbox install: %s\033[0m\n' "$*" >&2; exit 1; }

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.13 python3.12 python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      PY=$cand; break
    fi
  done
fi
[ -n "$PY" ] || die "Python 3.11 or newer is required (set PYTHON=/path/to/python3.11)"

if [ "$mode" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    mode=gpu
    say "NVIDIA GPU found ($(nvidia-smi -L | head -n1)): installing CUDA builds"
  else
    mode=cpu
    say "no NVIDIA GPU found (nvidia-smi missing or lists none): installing CPU builds"
  fi
else
  say "installing $mode builds (forced)"
fi

if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
$VPY -m pip install --quiet --upgrade pip

# replace_onnxruntime UNWANTED WANTED: remove the UNWANTED onnxruntime wheel before WANTED is
# installed (both own site-packages/onnxruntime; removing one after installing the other would
# delete files the other needs, so when both are there, both go and WANTED is installed afresh)
replace_onnxruntime() {
  if $VPY -m pip show "$1" >/dev/null 2>&1; then
    say "replacing $1 with $2"
    $VPY -m pip uninstall --quiet --yes "$1"
    if $VPY -m pip show "$2" >/dev/null 2>&1; then
      $VPY -m pip uninstall --quiet --yes "$2"
    fi
  fi
}

if [ "$mode" = cpu ]; then
  if $VPY -c 'import torch, sys; sys.exit("+cpu" not in torch.__version__)' 2>/dev/null; then
    say "torch $($VPY -c 'import torch; print(torch.__version__)') (CPU build) already installed"
  elif $VPY -m pip install --quiet "torch==2.13.0+cpu" 2>/dev/null; then
    say "torch 2.13.0+cpu installed from a local wheel"
  elif $VPY -m pip install --quiet "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu 2>/dev/null; then
    say "torch 2.13.0 (CPU build) installed from download.pytorch.org"
  else
    die "no CPU build of torch 2.13.0 is reachable (no local wheel, no download.pytorch.org); refusing to pull the multi-GB CUDA build on a CPU-only machine — put torch-2.13.0+cpu in pip's find-links or rerun with --gpu"
  fi
  if $VPY -m pip show xgboost >/dev/null 2>&1 && ! $VPY -m pip show xgboost-cpu >/dev/null 2>&1; then
    say "replacing the CUDA xgboost build with xgboost-cpu"
    $VPY -m pip uninstall --quiet --yes xgboost
  fi
  replace_onnxruntime onnxruntime-gpu onnxruntime
  extras=cpu
else
  if $VPY -m pip show xgboost-cpu >/dev/null 2>&1; then
    say "replacing xgboost-cpu with the CUDA xgboost build"
    $VPY -m pip uninstall --quiet --yes xgboost-cpu
  fi
  replace_onnxruntime onnxruntime onnxruntime-gpu
  $VPY -m pip install --quiet "torch==2.13.0"
  extras=gpu
fi
[ "$dev" = 1 ] && extras="$extras,dev"

# Test tools from apt, best effort (a failed apt-get never fails the install; the test that needs
# one skips without it): chromium renders the monitoring report headless (tests/monitor/test_report.py),
# tmux runs the real `mlbox tui` in a terminal (tests/tui/test_tmux.py).
if [ "$dev" = 1 ]; then
  missing=""
  command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || missing=" chromium"
  command -v tmux >/dev/null 2>&1 || missing="$missing tmux"
  if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      say "installing$missing with apt-get (for the headless-browser and terminal tests)"
      # shellcheck disable=SC2086
      if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing; } >/dev/null 2>&1; then
        say "could not install$missing: the tests that need it will skip"
      fi
    else
      say "not on PATH:$missing (install it to run the tests that need it; they skip)"
    fi
  fi
fi

say "installing mlbox[$extras]"
$VPY -m pip install --quiet -e ".[$extras]"
say "done: $($VPY -c 'import mlbox; print("mlbox", mlbox.__version__)'), torch $($VPY -c 'import importlib.metadata as m; print(m.version("torch"))'), $($VPY -c 'import importlib.metadata as m
for names in (("xgboost-cpu", "xgboost"), ("onnxruntime-gpu", "onnxruntime")):
    for n in names:
        try:
            print(n, m.version(n), end=" "); break
        except m.PackageNotFoundError: pass')"
if [ "$mode" = gpu ]; then
  say "onnxruntime providers: $($VPY -c 'import onnxruntime as o; print(", ".join(o.get_available_providers()))')"
fi
say "run: .venv/bin/mlbox quickstart"
