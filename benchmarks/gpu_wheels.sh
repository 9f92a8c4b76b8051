#!/usr/bin/env bash
# Download, on a machine with pip access, the wheels that a GPU machine's Python 3.12 + PyTorch image lacks for
# benchmarks/gpu_checks.sh (the packages hrtem_dataset and models import beyond torch, numpy, scipy, timm,
# safetensors, huggingface_hub, pillow, tifffile, pyyaml, typer, rich, tqdm and pytest), into .whl/ (git-ignored),
# and the first 4 structures of configs/au-generalist.yaml into .whl/au-generalist (21 MB of the 27: the
# image lacks pymatgen, which the Wulff shapes need, so gpu_checks.sh runs the paper setting on these).
# Usage: bash benchmarks/gpu_wheels.sh [PYTHON]   (PYTHON: the pip to download with, default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
py="${1:-.venv/bin/python}"
mkdir -p .whl
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  ase==3.29.0 pydantic==2.14.4 pydantic_core==2.50.5 pydantic-settings==2.16.3 python-dotenv==1.2.4 \
  typing-inspection==0.4.5 annotated-types==0.8.0 segmentation_models_pytorch==0.6.0
"$py" benchmarks/pipeline.py configs/au-generalist.yaml --structures 4 --workspace .whl/au-generalist --structures-only \
  > /dev/null
ls .whl
