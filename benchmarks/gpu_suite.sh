#!/usr/bin/env bash
# The GPU checks and timings, in stages, for one device call each (device time is short: one call, many stages).
#
#   bash benchmarks/gpu_suite.sh kernels parity train_T      # stage names, run in order
#   SCAN_IMPL=associative bash benchmarks/gpu_suite.sh train_T   # the scan the timing stages use
#
# Stages: kernels (benchmarks/gpu_kernel_tests.py; reruns isolated on a failure), parity (model parity + torch
# converter tests with every implementation the GPU has), train_{T,S,B}, scan, cifar10, derivatives, resolution.
#
# Needs: the wheels of what the GPU image lacks in .whl/ (grain, ml_collections, array_record, tensorboardX,
# portpicker), the parity fixtures in .parity/ and, for `cifar10`, the two CIFAR-10 tars in .data/ (all git-ignored,
# carried by the device tool). Every stage writes its full log and result files under $OUT (default /tmp/out).
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 VMAMBA_PARITY_DIR=$PWD/.parity BENCH_OUT_DIR=$OUT
summary=()
stage() {  # stage NAME TIMEOUT_S CMD...
  local name=$1 t=$2; shift 2
  local t0=$SECONDS
  echo "=== $name: $*"
  timeout "$t" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  summary+=("$name rc=$rc $((SECONDS - t0))s")
}
for s in "$@"; do
  case $s in
    kernels)  stage kernels 230 python3 benchmarks/gpu_kernel_tests.py --out "$OUT/gpu_kernel_tests_h100.json"
              # A kernel crash poisons the process' CUDA context: then rerun every case in its own process.
              grep -q "20/20 cases passed" "$OUT/kernels.log" || stage kernels_isolated 300 \
                python3 benchmarks/gpu_kernel_tests.py --isolate --out "$OUT/gpu_kernel_tests_isolated_h100.json" ;;
    parity)   stage parity 170 python3 -m pytest -q -p no:cacheprovider tests/test_vmamba_parity.py \
                tests/test_convert_torch.py ;;
    train_*)  stage "$s" 180 python3 benchmarks/train_throughput.py --models "${s#train_}" --steps 10 --warmup 3 \
                --impl "${SCAN_IMPL:-pallas_mosaic_gpu}" --timeout_s 170 --out_dir "$OUT" ;;
    scan)     stage scan 300 python3 benchmarks/scan_bench.py --out "$OUT/scan_h100.json" ;;
    cifar10)  stage cifar10 590 python3 benchmarks/train_cifar10.py --data_dir .data --budget_minutes 8.5 \
                --out_dir "$OUT" ;;
    derivatives) stage derivatives 590 python3 benchmarks/derivatives_bench.py --models msvmamba_v3_tiny,resvmamba_small \
                --impl "${SCAN_IMPL:-pallas_mosaic_gpu}" --timeout_s 280 --budget_s 560 --out_dir "$OUT" ;;
    resolution) stage resolution 590 python3 benchmarks/resolution_scaling.py --out "$OUT" --no-flops \
                --resolutions 384,640,768,1024 ;;
    *) echo "unknown stage $s"; exit 2 ;;
  esac
done
printf '%s\n' "${summary[@]}"
