#!/usr/bin/env bash
# GPU benchmarks in one go, on a machine with a CUDA GPU, from the repository root:
#   bash bench/gpu.sh            (QUICK=1 for a short dry run anywhere)
# Needs python3 with torch (CUDA), numpy, scipy, matplotlib, scikit-image; SimpleITK optional (Lanczos rows).
# The Visible Human crop is read from SR4ZCT_VHM (.nrrd or .npz) when ../shared is not there.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/SR4ZCT:$PWD/bench:${PYTHONPATH:-}"
python3 -c "import numpy, scipy, matplotlib, skimage, torch" || { echo "missing Python packages (see header)"; exit 1; }
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if [ "${QUICK:-0}" = 1 ]; then FAST_IT="--iterations 20"; PAPER_IT=20; SLICES=12; SETTINGS=5/2.5,3/4; else FAST_IT=""; PAPER_IT=1000; SLICES=150; SETTINGS=all; fi
step() { local limit=$1; shift; echo; echo "### $*"; timeout "$limit" python3 "$@" || echo "(step ended with status $?)"; }
step 100 bench/compute.py --preset fast --slices "$SLICES" $FAST_IT
step 230 bench/quality.py --truth vhm --settings "$SETTINGS" --presets fast --methods linear,cubic $FAST_IT
step 130 bench/mismodel.py $FAST_IT
step 120 bench/compute.py --preset paper --slices "$SLICES" --iterations "$PAPER_IT"
