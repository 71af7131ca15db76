#!/usr/bin/env bash
# The GPU checks and timings, in stages, for one device call each (device time is short: one call, many stages).
#
#   bash benchmarks/gpu_suite.sh kernels parity train_T      # stage names, run in order
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
    kernels)  stage kernels 230 python3 benchmarks/gpu_kernel_tests.py --out "$OUT/gpu_kernel_tests_h100.json" ;;
    kernels_isolated) stage kernels_isolated 400 python3 benchmarks/gpu_kernel_tests.py --isolate \
                        --out "$OUT/gpu_kernel_tests_h100.json" ;;
    parity)   stage parity 170 python3 -m pytest -q -p no:cacheprovider tests/test_vmamba_parity.py \
                tests/test_convert_torch.py ;;
    train_*)  stage "$s" 180 python3 benchmarks/train_throughput.py --models "${s#train_}" --steps 10 --warmup 3 \
                --impl pallas_mosaic_gpu --timeout_s 170 --out_dir "$OUT" ;;
    scan)     stage scan 300 python3 benchmarks/scan_bench.py --out "$OUT/scan_h100.json" ;;
    cifar10)  stage cifar10 590 python3 benchmarks/train_cifar10.py --data_dir .data --budget_minutes 8.5 \
                --out_dir "$OUT" ;;
    *) echo "unknown stage $s"; exit 2 ;;
  esac
done
printf '%s\n' "${summary[@]}"
