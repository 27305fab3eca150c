#!/usr/bin/env bash
# `make test-numerics`: every test marked `numerics` (engines, classify probabilities, blending,
# export/import round trips, Dask equality) again under other kernel choices of this machine, as if
# on other CPUs: ATen's vector width, oneDNN's instruction set and the thread count. Four runs of an
# orthogonal array: each setting appears twice, and every pair of settings meets in one run. Each run
# first prints what torch really uses (an unknown value would be ignored silently). Arguments, if
# any, narrow the test paths (default: tests).
set -uo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
status=0
summary=""
# the float64 references do not depend on these settings: the first run computes them, the others reuse them
AID_XAI_FLOAT64_CACHE="$(mktemp -d)"
export AID_XAI_FLOAT64_CACHE
trap 'rm -rf "$AID_XAI_FLOAT64_CACHE"' EXIT
while read -r aten isa threads; do
  settings="ATEN_CPU_CAPABILITY=$aten ONEDNN_MAX_CPU_ISA=$isa threads=$threads"
  echo "== $settings"
  export ATEN_CPU_CAPABILITY="$aten" ONEDNN_MAX_CPU_ISA="$isa" OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads" AID_XAI_TEST_THREADS="$threads"
  ONEDNN_VERBOSE=1 "$python" - <<'PY' 2>&1 | grep -E "^(torch|onednn_verbose.*isa)" || true
import torch
print(f"torch {torch.__version__}: ATen capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads")
with torch.inference_mode():
    torch.nn.Conv2d(64, 64, 3)(torch.rand(4, 64, 32, 32))  # large enough for oneDNN on one thread
PY
  start=$SECONDS
  if "$python" -m pytest -q -p no:cacheprovider -m numerics "${@:-tests}"; then result=passed; else result=FAILED; status=1; fi
  summary+="$settings: $result in $((SECONDS - start)) s"$'\n'
done <<'RUNS'
default SSE41 1
default AVX2 2
avx2 SSE41 2
avx2 AVX2 1
RUNS
printf '== make test-numerics\n%s' "$summary"
exit "$status"
