#!/usr/bin/env bash
# The CUDA checks in one run, for a lent GPU machine (bare: Python 3.12 with PyTorch, no internet):
#   1. the device-vs-CPU tests (tests/test_device.py: exit waves, images, calibration, on-the-fly imaging, AMP
#      training) and tests/test_imaging.py, which parametrizes its device tests over CUDA when present;
#   2. benchmarks/exit_wave.py --device cuda --batch 16 (1280² reference scene, 16 phonon configurations);
#   3. benchmarks/imaging.py (CPU and CUDA images/s);
#   4. benchmarks/segmentation.py (AMP training steps/s: 20 on CUDA, 3 on the CPU; on-the-fly imaging; tiled inference);
#   5. benchmarks/pipeline.py --no-dagster on a shard of au-baseline-cpu and on 4 structures of au-generalist
#      (built by gpu_wheels.sh into .whl/au-generalist: the image lacks pymatgen).
# Each step has its own time limit, so one hang cannot take the others' results; everything lands in $OUT
# (env.txt, summary.txt, tests.log, exit_wave.json, imaging.json, segmentation.json, pipeline.json (two JSON
# lines), stderr.log: 8 files, within
# what the device tool brings back). Missing Python packages
# travel as wheels in .whl/ (bash benchmarks/gpu_wheels.sh, then carry .whl).
# Usage (device tool): command "bash benchmarks/gpu_checks.sh", carry [".whl"], timeout_s 560.
# A dry run on any machine: PYTHON=.venv/bin/python EXIT_WAVE_ARGS="--repeat 1 --no-abtem" bash benchmarks/gpu_checks.sh
# (move .whl/*.whl aside first when that Python is not 3.12; on a CPU the fifth step's paper-setting run outlasts its
# 150 s limit — it is sized for the GPU — after the au-baseline-cpu line has landed)
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu-checks}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/hrtem-site .whl/*.whl \
    || { echo "wheel install failed" | tee "$OUT/summary.txt"; exit 1; }
  export PYTHONPATH="/tmp/hrtem-site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:$PWD/tests:${PYTHONPATH:-}" PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 MPLBACKEND=Agg
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1; nproc
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '-')"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
step() {  # step NAME LIMIT_S OUTFILE COMMAND...
  local name=$1 limit=$2 file=$3; shift 3
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$file" 2> "/tmp/gpu-checks-$name.err"
  local rc=$?
  echo "$name rc=$rc $((SECONDS - t0)) s (${SECONDS} s in all)" | tee -a "$OUT/summary.txt"
  tail -n 3 "/tmp/gpu-checks-$name.err" | sed "s/^/  $name: /"
  { echo "=== $name (rc=$rc)"; tail -n 200 "/tmp/gpu-checks-$name.err"; } >> "$OUT/stderr.log"
}
step tests 150 tests.log "$PY" -m pytest -q -p no:cacheprovider -x tests/test_device.py tests/test_imaging.py
tail -n 5 "$OUT/tests.log"
# shellcheck disable=SC2086  # word splitting of the override is intended
step exit_wave 90 exit_wave.json "$PY" benchmarks/exit_wave.py ${EXIT_WAVE_ARGS:---device cuda --batch 16 --no-abtem --repeat 3}
step imaging 60 imaging.json "$PY" benchmarks/imaging.py --seconds 2 --repeats 2
step segmentation 60 segmentation.json "$PY" benchmarks/segmentation.py --steps 3
# the pipeline on the GPU (no Dagster there): a shard of au-baseline-cpu, then 4 structures of the paper setting, in
# a copy of the prebuilt workspace (the stages would reuse waves and images written into .whl/ by an earlier run)
rm -rf /tmp/gpu-checks-au-generalist && cp -r .whl/au-generalist /tmp/gpu-checks-au-generalist 2>/dev/null
step pipeline 150 pipeline.json bash -c "\"$PY\" benchmarks/pipeline.py configs/au-baseline-cpu.yaml --no-dagster \
  && \"$PY\" benchmarks/pipeline.py configs/au-generalist.yaml --structures 4 --workspace /tmp/gpu-checks-au-generalist \
  --no-dagster"
