#!/usr/bin/env bash
# The GPU checks and timings, in stages, for one device call each (device time is short: one call, many stages).
#
#   bash benchmarks/gpu_suite.sh kernels parity train_T      # stage names, run in order
#   SCAN_IMPL=associative bash benchmarks/gpu_suite.sh train_T   # the scan the timing stages use (default: auto)
#   KERNEL_IMPLS=fused_mosaic_gpu D_STATES=16 KERNEL_S=240 bash benchmarks/gpu_suite.sh kernels   # a subset of tests
#   KERNEL_START=3 ...                                    # go on from case 3 (0-2 passed before a slot ended)
#   KERNEL_CASES=2,3,5 ...                                # only these cases (the [index] its log prints)
#   PARITY_K=fused_mosaic_gpu bash benchmarks/gpu_suite.sh parity   # the model parity tests of one implementation
#   VMAMBA_MGPU_DIRECT_STORE=0 bash benchmarks/gpu_suite.sh kernels   # outputs through SMEM tiles instead of the default direct_store path
#   VMAMBA_MGPU_APPROX_MATH=0 bash benchmarks/gpu_suite.sh kernels    # libdevice's exact exp / log instead of the default
#   VMAMBA_MGPU_FAST_PLAN_D_STATES=1,16 KERNEL_IMPLS=fused_mosaic_gpu D_STATES=16 bash benchmarks/gpu_suite.sh kernels  # d16 fast plan
#   CIFAR_EPOCHS=60 CIFAR_SET="data.image_size=64 model.kwargs.patch_size=4 model.kwargs.patchembed_version=v2 \
#       aug.crop_padding=8" bash benchmarks/gpu_suite.sh cifar10      # a recipe variant, no config edit
#   TRAIN_S=300 BREAKDOWN=model,xla_dwconv_grad BREAKDOWN_S=240 bash benchmarks/gpu_suite.sh train_T breakdown
#   TRAIN_S=500 bash benchmarks/gpu_suite.sh train_S+B      # two models, compiled in parallel, timed in turns
#   SCAN_BLOCKS=1 TRAIN_S=300 bash benchmarks/gpu_suite.sh train_T   # each stage's blocks as one nn.scan: compile time
#   SCAN_IMPL=auto,auto,pallas_mosaic_gpu,pallas_mosaic_gpu TRAIN_S=300 bash benchmarks/gpu_suite.sh train_T
#       # one implementation per stage (the plain kernel where it wins: scan_h200.md)
#   VMAMBA_MGPU_SPLITS=3 bash benchmarks/gpu_suite.sh kernels splitsweep   # the split walk: tested, then timed
#   KNOB=delta_in_kernel KNOB_S=300 bash benchmarks/gpu_suite.sh knobsweep   # the fused core's delta from the kernel or XLA,
#       per stage (KNOB=merge_in_kernel, the default: the orders summed by the kernel's atomic adds or by XLA)
#   VMAMBA_MGPU_DELTA_IN_KERNEL_MAX_RANK=1000000 TRAIN_S=300 bash benchmarks/gpu_suite.sh train_T   # in-kernel delta everywhere
#   SCAN_IMPLS=pallas_mosaic_gpu SCAN_MODEL=1 SCAN_S=450 bash benchmarks/gpu_suite.sh scan   # + whole-model inference
#   TRAIN_MERGE=benchmarks/results/train_throughput_h200.json TRAIN_S=400 bash benchmarks/gpu_suite.sh train_B
#       # one more row for the committed table (DERIV_MERGE likewise): S/B-sized models compile for ~5 minutes, so
#       # a table is filled over several calls
#
# Stages: kernels (benchmarks/gpu_kernel_tests.py for the plain scan and the fused SS2D core, two processes at once;
# a crashed one reruns isolated), parity (model parity + torch converter tests with every implementation the GPU has),
# sweep (the kernels' tile/unroll variants), splitsweep (the walk split into blocks), knobsweep (a fused-core knob off and on, per stage), scanprof (their stage-1 device time per op), dump (the kernels' SASS and time-loop instruction counts), cifarprof (the CIFAR-10
# config's train step per op), cifarpipe (its input pipeline alone, per variant), scan, breakdown (where the train step's time goes), train_{T,S,B} (or
# train_S+B: several models in one run, compiled in parallel, then timed in turns), profile (the train step's device time per
# HLO op: which kernels to speed up),
# cifar10, derivatives, resolution.
#
# Needs: the wheels of what the GPU image lacks in .whl/ (grain, ml_collections, array_record, tensorboardX,
# portpicker), the parity fixtures in .parity/ and, for `cifar10`, the two CIFAR-10 tars in .data/ (all git-ignored,
# carried by the device tool). Every stage writes its result files under $RES (default /tmp/suite), packed after each
# stage into $OUT/suite.tgz (the device tool returns at most 8 files), and its log straight to $OUT/<stage>.log, so a
# call killed at the device tool's 600 s limit still returns the log of the stage it was in (so at most 7 stages a
# call: the tool returns 8 files). Plan a call to end
# inside 600 s *including* the ~6-10 s wheel install: a cifar10 stage of 590 s once overran and returned nothing
# (575 s with a 9-minute training budget: the run plans to end inside it; the 560 s stage of 2026-12-01 ran 566 s
# in all).
set -uo pipefail
OUT=${OUT:-/tmp/out}
RES=${RES:-/tmp/suite}
mkdir -p "$OUT" "$RES"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # stages may share the GPU (the two kernel test processes do)
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 VMAMBA_PARITY_DIR=$PWD/.parity BENCH_OUT_DIR=$RES
summary=()
stage() {  # stage NAME TIMEOUT_S CMD...
  local name=$1 t=$2; shift 2
  local t0=$SECONDS log="$OUT/${name//+/_}.log"  # the device tool returns only [A-Za-z0-9._-] names
  echo "=== $name: $*"
  timeout "$t" "$@" > "$log" 2>&1
  local rc=$?
  grep -v cuda_timer "$log" | tail -n 25  # XLA's autotuner timing warnings drown the rest
  summary+=("$name rc=$rc $((SECONDS - t0))s")
  tar czf "$OUT/suite.tgz" -C "$RES" .
}
kernel_tests() {  # kernel_tests IMPL TIMEOUT: one process, then every case isolated if a crash poisoned it
  local impl=$1 t=$2 t0=$SECONDS
  timeout "$t" python3 benchmarks/gpu_kernel_tests.py --impls "$impl" --d-states "${D_STATES:-1,16}" \
    --start "${KERNEL_START:-0}" ${KERNEL_CASES:+--case "$KERNEL_CASES"} --out "$RES/gpu_kernel_tests_$impl.json" > "$RES/kernels_$impl.log" 2>&1
  if grep -q "CUDA_ERROR\|Segmentation\|core dumped" "$RES/kernels_$impl.log" && ((SECONDS - t0 < t - 30)); then
    timeout $((t - SECONDS + t0)) python3 benchmarks/gpu_kernel_tests.py --impls "$impl" --isolate --d-states "${D_STATES:-1,16}" \
      --out "$RES/gpu_kernel_tests_${impl}_isolated.json" > "$RES/kernels_${impl}_isolated.log" 2>&1
  fi
}
for s in "$@"; do
  case $s in
    kernels)  t0=$SECONDS; echo "=== kernels"
              # A kernel crash poisons its process' CUDA context, hence one process per implementation.
              for impl in ${KERNEL_IMPLS:-pallas_mosaic_gpu fused_mosaic_gpu}; do kernel_tests "$impl" "${KERNEL_S:-180}" & done
              wait
              grep -h "cases passed\|FAIL" "$RES"/kernels_*.log | head -40
              summary+=("kernels $((SECONDS - t0))s"); tar czf "$OUT/suite.tgz" -C "$RES" . ;;
    sweep)    # SWEEP_PLANS: a JSON list of plans to time instead of scan_bench's SWEEP; SWEEP_N: at that d_state
              stage sweep "${SWEEP_S:-240}" python3 benchmarks/scan_bench.py --sweep ${SWEEP_PLANS:+--plans "$SWEEP_PLANS"} \
                --sweep-d-state "${SWEEP_N:-1}" --out "$RES/scan_sweep.json" ;;
    breakdown) stage breakdown "${BREAKDOWN_S:-300}" python3 benchmarks/train_step_breakdown.py ${SCAN_IMPL:+--impl "$SCAN_IMPL"} \
                --variants "${BREAKDOWN:-model,shift_conv}" --out "$RES/train_step_breakdown.json" ;;
    parity)   # PARITY_S: 300 s ran the 22 model parity tests but cut the converter test (2026-12-03, H200); on the
              # H100 340 s ran 9 (2026-12-06). PARITY_K: a pytest -k expression, to split the tests over calls
              # (PARITY_K=fused_mosaic_gpu: the `auto` core's 6 tests, 86 s on the H100)
              stage parity "${PARITY_S:-420}" python3 -m pytest -q -rA -p no:cacheprovider tests/test_vmamba_parity.py \
                tests/test_convert_torch.py ${PARITY_K:+-k "$PARITY_K"} ;;
    train_*)  # VMamba-T's train step compiles in ~120 s on the H200 (2026-12-01); S and B are deeper.
              # train_T+S+B: one invocation, the three models compiled in parallel, then timed in turns (run_in_turns).
              stage "$s" $((${TRAIN_S:-400} + 20)) python3 benchmarks/train_throughput.py --models "$(echo "${s#train_}" | tr + ,)" \
                --steps 10 --warmup 3 ${SCAN_IMPL:+--impl "$SCAN_IMPL"} --timeout_s "${TRAIN_S:-400}" --budget_s "${TRAIN_S:-400}" \
                ${TRAIN_MERGE:+--merge "$TRAIN_MERGE"} ${SCAN_BLOCKS:+--scan_blocks} --out_dir "$RES" ;;
    profile)  stage profile "${PROFILE_S:-240}" python3 benchmarks/profile_step.py --model "${PROFILE_MODEL:-T}" \
                ${SCAN_IMPL:+--impl "$SCAN_IMPL"} --out_dir "$RES" ;;
    scanprof) # a stage's scan and fused core (SCANPROF_MAP: 56 (default), 28, 14 or 7): wall vs traced device time,
              # split per op (command buffers off)
              # (SCANPROF_PLANS: a JSON list of fused-core plans to trace instead of PROFILE_VARIANTS)
              stage scanprof "${SCANPROF_S:-200}" python3 benchmarks/scan_bench.py --profile \
                --profile-map "${SCANPROF_MAP:-56}" ${SCANPROF_PLANS:+--profile-plans "$SCANPROF_PLANS"} --out "$RES/scan_profile${SCANPROF_MAP:+_$SCANPROF_MAP}.json" ;;
    splitsweep) # the plain scan and the fused core with the walk split into blocks (scan_bench's SPLIT_SWEEP), checked
              stage splitsweep "${SPLIT_S:-300}" python3 benchmarks/scan_bench.py --split-sweep --out "$RES/scan_splits.json" ;;
    dump)     # the fused core's kernels' PTX / ptxas / SASS at a stage (DUMP_MAP, default 56) with DUMP_PLAN's knobs, and
              # their time loops' instruction counts (benchmarks/kernel_dump.py)
              stage dump "${DUMP_S:-150}" python3 benchmarks/kernel_dump.py --map "${DUMP_MAP:-56}" --plan "${DUMP_PLAN:-{\}}" \
                --out "$RES/dump_${DUMP_TAG:-default}" ;;
    knobsweep) # the fused core with an on/off knob (KNOB) off and on at VMamba-T's four stages, checked
              stage knobsweep "${KNOB_S:-300}" python3 benchmarks/scan_bench.py --knob-sweep "${KNOB:-merge_in_kernel}" \
                --out "$RES/scan_${KNOB:-merge_in_kernel}.json" ;;
    cifarprof) # configs/cifar10.py's own train step, traced: where its ~46 ms per 512 images go
              stage cifarprof "${CIFARPROF_S:-200}" python3 benchmarks/train_cifar10.py --data_dir .data --profile \
                ${CIFAR_SET:+--set $CIFAR_SET} --out_dir "$RES" ;;
    cifarpipe) # the CIFAR-10 train stream alone (Grain workers + host-to-device copy), per input variant: img/s
              stage cifarpipe "${CIFARPIPE_S:-150}" python3 benchmarks/train_cifar10.py --data_dir .data --pipeline \
                ${CIFAR_SET:+--set $CIFAR_SET} --out_dir "$RES" ;;
    scan)     # SCAN_IMPLS: a comma list of selective_scan implementations (the SS2D core rows time every core)
              # SCAN_MODEL=1: and VMamba-T's whole-model inference throughput per implementation (SCAN_S ~400)
              # SCAN_MODEL=only: the whole-model rows alone, for the SS2D cores of SCAN_SS2D (default: every core)
              stage scan "${SCAN_S:-150}" python3 benchmarks/scan_bench.py --impls "${SCAN_IMPLS:-pallas_mosaic_gpu}" \
                $([ -n "${SCAN_MODEL:-}" ] || echo --skip-model) $([ "${SCAN_MODEL:-}" != only ] || echo --model-only) \
                ${SCAN_SS2D:+--ss2d-impls "$SCAN_SS2D"} --out "$RES/scan.json" ;;
    cifar10)  # CIFAR_EPOCHS: skip the probe (~80 s of compiling a step the run compiles again) and train that many
              # (CIFAR_EPOCHS=128: the config's epochs, the measured 8.2-minute run in cifar10_h200.md);
              # CIFAR_SET: config overrides (space-separated key=value) for trying a recipe without editing the config
              stage cifar10 "${CIFAR_S:-575}" python3 benchmarks/train_cifar10.py --data_dir .data \
                --budget_minutes "${CIFAR_MIN:-9}" ${CIFAR_EPOCHS:+--epochs "$CIFAR_EPOCHS"} \
                ${CIFAR_SET:+--set $CIFAR_SET} --out_dir "$RES" ;;
    derivatives) stage derivatives $((${DERIV_S:-550} + 20)) python3 benchmarks/derivatives_bench.py \
                --models "${DERIV_MODELS:-msvmamba_v3_tiny,resvmamba_small,vmamba_tiny_s1l8}" \
                ${SCAN_IMPL:+--impl "$SCAN_IMPL"} --budget_s "${DERIV_S:-550}" \
                ${DERIV_MERGE:+--merge "$DERIV_MERGE"} ${DERIV_PARTS:+--parts "$DERIV_PARTS"} --out_dir "$RES" ;;
    resolution) stage resolution 560 python3 benchmarks/resolution_scaling.py --out "$RES" --no-flops \
                --resolutions "${RESOLUTIONS:-224,384,512,640,768,1024}" --budget-s "${BUDGET_S:-470}" ;;
    *) echo "unknown stage $s"; exit 2 ;;
  esac
done
printf '%s\n' "${summary[@]}"
