"""GPU correctness tests of the selective-scan kernels and the fused SS2D core against their XLA references (run on a
GPU, output committed).

CI runs the Mosaic GPU kernels' bodies in Pallas' interpreter on their direct_store path only
(tests/test_mosaic_gpu_interpret.py); this script tests the compiled kernels on the GPU. Every case draws
fresh random inputs and compares the forward and `jax.grad` wrt every input (u, delta, A, B, C, D, delta_bias) with
the reference, at VMamba's stage lengths L = 3136, 784, 196, 49 and an odd L, d_state N = 1 and 16, bf16 and fp32.
Fused SS2D cores (`--impls fused_mosaic_gpu`) are compared with `ss2d_core_reference` (cross-scan, `lax.scan`,
cross-merge), forward and the grads of all six inputs, at VMamba-T's four stage maps (56x56x96 .. 7x7x768) and an odd
5x7x96 map.
Tolerances are the CPU test's (tests/test_selective_scan_kernels.py): max abs error over max |reference|
below 1e-5 (fp32 forward), 1e-4 (fp32 grads), 1e-2 (bf16). bf16 cases also run the reference on the fp32 upcast of
the same inputs and pass on the error against that result: below max(1e-2, twice the bf16 reference's own error
against it) (`compare`; records since 2026-12-02 carry `rule: "vs_fp32"`, earlier ones passed on the error against
the bf16 reference, still recorded as `errors`). Each case draws its inputs from a seed of its own (`--seed` forces
one; until 2026-12-02 the seed was the case's index in the run's list).

    python benchmarks/gpu_kernel_tests.py --out benchmarks/results/gpu_kernel_tests_h100.json

Writes a JSON list of records (impl, case, max relative error per output, pass) and prints a table; exits non-zero
if any case fails.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
import traceback
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pallas_kernels.selective_scan import api  # noqa: E402
from pallas_kernels.selective_scan.reference import selective_scan_reference  # noqa: E402
from pallas_kernels.selective_scan.testing import make_inputs, rel_err  # noqa: E402
from pallas_kernels.ss2d.testing import make_core_inputs  # noqa: E402

ARG_NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")
TOL = {"fp32": (1e-5, 1e-4), "bf16": (1e-2, 1e-2)}
DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16}


class _FirstCallTimer:
    """Seconds of each function's first (compiling) call: a case's time is nearly all compilation, and the kernels'
    share of it (Mosaic GPU compiles every distinct kernel at its first call, in every process) is worth knowing."""

    def __init__(self):
        self.seconds = {}

    def __call__(self, name, fn, args):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        self.seconds[name] = round(time.perf_counter() - t0, 2)
        return out


def upcast_bf16(args):
    """The inputs with every bf16 array as fp32: the same values, computed without bf16 roundings."""
    return tuple(a.astype(jnp.float32) if a.dtype == jnp.bfloat16 else a for a in args)


def passes_vs_fp32(vs_fp32: dict, ref_vs_fp32: dict, tol: dict) -> bool:
    """The bf16 rule: every output's error against the fp32 result below max(tol, 2 x the bf16 reference's own)."""
    return all(vs_fp32[k] < max(tol[k], 2 * ref_vs_fp32[k]) for k in vs_fp32)


def compare(fn, ref, args, names, dtype_name, seed):
    """Errors of `fn` against `ref`, forward and the grads wrt every input, and whether they pass.

    fp32: max |fn - ref| / max |ref| below TOL (forward, grads). bf16: comparing two bf16 computations counts both
    their roundings (in Pallas' interpreter the fused core and the bf16 reference were about equally far from the fp32
    result and kernel-vs-reference about their sum: gpu_kernel_tests_h200_direct_store.md), so each output passes
    when its error against the fp32 result (`ref` on the upcast inputs) is below max(TOL, 2 x the bf16 reference's own
    error against it). Returns (record fields, passed, first-call seconds)."""
    timer = _FirstCallTimer()
    y_ref = timer("reference_fwd", jax.jit(ref), args)
    wgt = jax.random.normal(jax.random.PRNGKey(seed + 1), y_ref.shape)
    grad = lambda f: jax.jit(jax.grad(lambda *a: jnp.sum(f(*a) * wgt), tuple(range(len(args)))))  # noqa: E731
    out = {"y": timer("kernel_fwd", jax.jit(fn), args)}
    out.update(zip(("d" + n for n in names), timer("kernel_grad", grad(fn), args)))
    want = {"y": y_ref}
    want.update(zip(("d" + n for n in names), timer("reference_grad", grad(ref), args)))
    errs = {k: rel_err(out[k], want[k]) for k in out}
    fwd_tol, grad_tol = TOL[dtype_name]
    tol = {k: fwd_tol if k == "y" else grad_tol for k in out}
    if dtype_name == "fp32":
        return dict(errors=errs), all(errs[k] < tol[k] for k in errs), timer.seconds
    wide = upcast_bf16(args)
    exact = {"y": timer("fp32_fwd", jax.jit(ref), wide)}
    exact.update(zip(("d" + n for n in names), timer("fp32_grad", grad(ref), wide)))
    vs_fp32 = {k: rel_err(out[k], exact[k]) for k in out}
    ref_vs_fp32 = {k: rel_err(want[k], exact[k]) for k in out}
    ok = passes_vs_fp32(vs_fp32, ref_vs_fp32, tol)
    return (dict(errors=errs, errors_vs_fp32=vs_fp32, reference_errors_vs_fp32=ref_vs_fp32, rule="vs_fp32"), ok,
            timer.seconds)


def check_ss2d_case(impl, batch, h, w, d, d_state, dtype_name, seed):
    from pallas_kernels.ss2d import ss2d_core, ss2d_core_reference
    args = make_core_inputs(seed, batch, h, w, d, d_state, -(-d // 16), DTYPES[dtype_name])  # dt rank "auto"
    ref = lambda *a: ss2d_core_reference(*a, scan_implementation="xla")  # noqa: E731
    fn = lambda *a: ss2d_core(*a, implementation=impl)  # noqa: E731
    return compare(fn, ref, args, ("x", "x_proj_weight", "dt_projs_weight", "dt_projs_bias", "A_logs", "Ds"),
                   dtype_name, seed)


def check_case(impl, batch, groups, per_group, d_state, length, dtype_name, seed):
    args = make_inputs(seed, batch, groups, per_group, d_state, length, DTYPES[dtype_name])
    fn = lambda *a: api.selective_scan(*a, implementation=impl)  # noqa: E731
    return compare(fn, selective_scan_reference, args, ARG_NAMES, dtype_name, seed)


def run_case(impl, b, k, d, n, length, dtype_name, seed):
    try:
        if impl.startswith("fused"):  # k is the map's (H, W)
            fields, ok, seconds = check_ss2d_case(impl, b, *k, d, n, dtype_name, seed)
        else:
            fields, ok, seconds = check_case(impl, b, k, d, n, length, dtype_name, seed)
        return dict(**fields, passed=ok, first_call_s=seconds)
    except Exception as e:  # noqa: BLE001 - record and continue: one broken case must not hide the others
        return dict(errors=None, passed=False, exception=f"{type(e).__name__}: {str(e)[:2000]}",
                    traceback=traceback.format_exc()[-3000:])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--impls", default="pallas_mosaic_gpu")
    p.add_argument("--out", default=None)
    p.add_argument("--quick", action="store_true", help="one case per (N, dtype)")
    p.add_argument("--d-states", default="1,16", help="comma list of d_state values to test")
    p.add_argument("--case", type=lambda v: {int(i) for i in v.split(",")}, default=None,
                   help="run only these case indices, a comma list (--isolate runs one each)")
    p.add_argument("--start", type=int, default=0,
                   help="skip the cases before this index (to go on where a cut-off slot ended)")
    p.add_argument("--seed", type=int, default=None,
                   help="draw every selected case's inputs from this seed (default: a seed of the case itself)")
    p.add_argument("--isolate", action="store_true",
                   help="run every case in its own process, so a crashed kernel cannot poison the CUDA context of "
                        "the cases after it")
    args = p.parse_args()

    dev = jax.devices()[0]
    from pallas_kernels.selective_scan import pallas_mosaic_gpu as mgpu
    from pallas_kernels.ss2d import pallas_mosaic_gpu as fused
    env = dict(device=dev.device_kind, platform=dev.platform, jax_version=jax.__version__,
               date=datetime.date.today().isoformat(),
               # the Mosaic GPU kernels' module defaults (VMAMBA_MGPU_* environment variables) these cases ran with
               mgpu_direct_store=mgpu.DIRECT_STORE, mgpu_approx_math=mgpu.APPROX_MATH,
               mgpu_fast_plan_d_states=list(mgpu.FAST_PLAN_D_STATES), mgpu_splits=mgpu.SPLITS, mgpu_unroll=mgpu.UNROLL,
               mgpu_bwd_unroll=mgpu.BWD_UNROLL, mgpu_plain_bwd_seq_tile=mgpu.PLAIN_BWD_SEQ_TILE,
               mgpu_plain_bwd_seq_tile_register_states=mgpu.PLAIN_BWD_SEQ_TILE_REGISTER_STATES,
               mgpu_dbc_by_xla=mgpu.DBC_BY_XLA, mgpu_cache_steps=mgpu.CACHE_STEPS,
               mgpu_static_orders=mgpu.STATIC_ORDERS, mgpu_register_states=mgpu.REGISTER_STATES,
               mgpu_register_states_d_states=list(mgpu.REGISTER_STATES_D_STATES),
               mgpu_delta_in_kernel_max_rank=fused.DELTA_IN_KERNEL_MAX_RANK, mgpu_merge_in_kernel=fused.MERGE_IN_KERNEL,
               mgpu_pixel_outputs=fused.PIXEL_OUTPUTS,
               mgpu_y_in_compute_dtype_d_states=list(fused.Y_IN_COMPUTE_DTYPE_D_STATES))
    print(json.dumps(env))
    # VMamba-T's stages, an odd length, and L 16 (CIFAR's 4x4 last stage: tiles shrunk to 8, plan_tiles)
    lengths = [3136, 784, 196, 49, 37, 16]
    maps = [(56, 56, 96), (28, 28, 192), (14, 14, 384), (7, 7, 768), (5, 7, 96), (4, 4, 384)]
    cases = []
    for impl in args.impls.split(","):
        for n in (int(v) for v in args.d_states.split(",")):
            for dtype_name in ("fp32", "bf16"):
                if impl.startswith("fused"):
                    for (h, w, d) in maps[:1] if args.quick else maps:
                        cases.append((impl, 2, (h, w), d, n, h * w, dtype_name))
                    continue
                for length in lengths[:1] if args.quick else lengths:
                    # per_group 96 (VMamba-T stage 1: padded to one 128-lane tile) and 192 (two tiles).
                    per_group = 96 if length in (3136, 49) else 192
                    cases.append((impl, 2, 4, per_group, n, length, dtype_name))
    records, failed = [], 0
    for i, (impl, b, k, d, n, length, dtype_name) in enumerate(cases):
        if (args.case is not None and i not in args.case) or i < args.start:
            continue
        # The case's own seed, not its index in this run's list: a rerun of one case draws the same inputs (until
        # 2026-12-02 the seed was the index, so a run of one d_state drew other inputs than a run of both).
        case = repr((impl, b, k, d, n, length, dtype_name)).encode()
        seed = args.seed if args.seed is not None else zlib.crc32(case) % 2**31
        rec = dict(impl=impl, B=b, K=k, C=d, N=n, L=length, dtype=dtype_name, seed=seed, **env)
        t0 = time.time()
        if args.isolate:
            cmd = [sys.executable, __file__, "--impls", impl, "--case", str(i), "--d-states", args.d_states] + (
                ["--quick"] if args.quick else []) + (["--seed", str(args.seed)] if args.seed is not None else [])
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RECORD ")]
            if lines:
                rec = json.loads(lines[-1][len("RECORD "):])
            else:
                rec.update(errors=None, passed=False, exception=f"process exited {proc.returncode}",
                           traceback=(proc.stdout[-1500:] + "\n" + proc.stderr[-3000:]))
        else:
            rec.update(run_case(impl, b, k, d, n, length, dtype_name, seed))
            if args.case is not None:
                print("RECORD " + json.dumps(rec), flush=True)
        rec["seconds"] = round(time.time() - t0, 1)
        failed += not rec["passed"]
        records.append(rec)
        worst = max(rec["errors"].values()) if rec["errors"] else float("nan")
        vs_fp32 = (f" (vs fp32 {max(rec['errors_vs_fp32'].values()):.2e}, reference's own "
                   f"{max(rec['reference_errors_vs_fp32'].values()):.2e})" if rec.get("errors_vs_fp32") else "")
        print(f"[{i}] {impl:18s} B={b} K={k} C={d:3d} N={n:2d} L={length:4d} {dtype_name}  "
              f"{'PASS' if rec['passed'] else 'FAIL'}  worst rel err {worst:.2e}{vs_fp32}  ({rec['seconds']} s)"
              + (f"  first calls {rec['first_call_s']}" if rec.get("first_call_s") else "")
              + (f"  {rec.get('exception', '')[:300]}" if not rec["passed"] else ""), flush=True)
        if "traceback" in rec and failed <= 2:
            print(rec["traceback"], flush=True)
        if args.out:  # after every case: a slot's timeout keeps the finished records
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(records, indent=1))
    for impl in dict.fromkeys(r["impl"] for r in records):
        rs = [r for r in records if r["impl"] == impl]
        print(f"{impl}: {sum(r['passed'] for r in rs)}/{len(rs)} cases passed")
    print(f"{len(records) - failed}/{len(records)} cases passed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
