"""Selective-scan / SS2D-core / VMamba-T timings at the shapes of ../shared/spec/targets.md (run on a GPU).

For every implementation that runs on the device: forward and forward+backward (grad wrt every input) of the
selective scan at the four VMamba-T stages (batch 128, N = 1) and the N = 16 case, the SS2D core at stage 1, and
VMamba-T whole-model inference throughput (224 px, batch 128, bf16). Medians after warm-up, two ways (wall clock,
benchmarks/common.py `time_fn`): fwd_ms / fwd_bwd_ms synchronise every call (the host's dispatch and wait included);
fwd_b2b_ms / fwd_bwd_b2b_ms time B2B_CALLS back-to-back calls per sync, the device's time per call as CUDA-event
timing of a stream sees it (the official numbers' method). GB/s counts the forward's minimal traffic (read u and
delta, B and C, write y in fp32) over fwd_b2b_ms.

    python benchmarks/scan_bench.py --out benchmarks/results/scan_h100.json

Writes a JSON list of records with keys impl, B, K, C, N, L, dtype, fwd_ms, fwd_bwd_ms, fwd_b2b_ms, fwd_bwd_b2b_ms,
fwd_GBps, device, jax_version, date (SS2D-core records have impl "ss2d_core/<name>"; the model record has img_per_s).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import disable_command_buffers, median, time_fn  # noqa: E402
from gpu_kernel_tests import DTYPES, make_inputs, passes_vs_fp32, upcast_bf16  # noqa: E402
from pallas_kernels.ss2d.testing import make_core_inputs  # noqa: E402
from pallas_kernels.selective_scan.reference import selective_scan_reference  # noqa: E402
from pallas_kernels.selective_scan.testing import rel_err  # noqa: E402
from pallas_kernels.selective_scan import api  # noqa: E402

# (B, K, C, N, L, dtype): targets.md, "The selective scan alone".
SHAPES = [
    (128, 4, 96, 1, 3136, "bf16"),
    (128, 4, 96, 1, 3136, "fp32"),
    (128, 4, 192, 1, 784, "bf16"),
    (128, 4, 384, 1, 196, "bf16"),
    (128, 4, 768, 1, 49, "bf16"),
    (32, 4, 192, 16, 3136, "bf16"),
]
OFFICIAL = {  # targets.md: official oflex CUDA kernel on an H100, (fwd_ms, fwd_bwd_ms)
    (128, 4, 96, 1, 3136, "bf16"): (1.139, 4.439),
    (128, 4, 96, 1, 3136, "fp32"): (1.172, 5.151),
    (128, 4, 192, 1, 784, "bf16"): (0.592, 2.309),
    (128, 4, 384, 1, 196, "bf16"): (0.326, 1.393),
    (128, 4, 768, 1, 49, "bf16"): (0.307, 1.186),
    (32, 4, 192, 16, 3136, "bf16"): (2.696, 11.286),
}


STAGES = [(56, 96), (28, 192), (14, 384), (7, 768)]  # VMamba-T's (map side, channels) at 224
# Kernel variants (pallas_mosaic_gpu._Plan knobs) timed at stage 1 by --sweep, each checked against the XLA
# reference. The checked sweeps of 2026-12-01 (results/scan_sweep_h200.md) found approx_math (one-instruction exp /
# log) right and 1.4-1.7x faster, direct_store (outputs straight to GMEM) right once each tile ends with a warpgroup
# barrier (`_end_direct_tile`) and another 1.1-1.35x, and unroll 4 mixed (fwd+bwd 4-6% faster, the fused forward 20%
# slower). approx_math and direct_store are now d_state 1's default; the
# rows vary the tiles around them (direct_store needs no SMEM output tiles, so longer tiles may fit) and keep the
# exact and the SMEM-output plans for reference. The plain scan's N = 1 bf16 B/C tile needs tiles of 32 or more
# (TMA's 128-byte copy minimum; the wrapper refuses shorter ones).
SWEEP = [dict(seq_tile=tf, bwd_seq_tile=tb, unroll=u, direct_store=ds, approx_math=ap) for tf, tb, u, ds, ap in [
    (64, 32, 1, False, False), (64, 32, 1, False, True), (64, 32, 1, True, True), (128, 32, 1, True, True),
    (32, 32, 1, True, True), (64, 64, 1, True, True), (128, 64, 1, True, True)]]

# --split-sweep: the walk cut into `splits` blocks (`_Plan.splits`) at the default tiles, per (map side, channels).
# Stage 1's grid is 512 blocks for 132 SMs: 7 splits (its 49 forward tiles of 64, none padded) give 3584. Stage 2's
# 784 steps are fewer but its grid is half as wide again. Result (H200): no split plan paid, results/scan_splits_h200.md.
SPLIT_SWEEP = {(56, 96): (1, 2, 4, 7), (28, 192): (1, 2, 4)}


# --knob-sweep: the fused core's on/off knobs timed off and on per stage. delta_in_kernel: the in-kernel low-rank
# delta costs R = C/16 loads + FMAs a step, XLA's delta a (K, L, D) array (results/scan_delta_h200.md);
# merge_in_kernel: the orders summed by atomic adds in the kernel or by XLA over 4x the merged output; cache_steps:
# the backward's adjoint loop reads delta and the decays its recompute loop kept in SMEM instead of forming them again;
# static_orders: each block runs code compiled for its own order's walk direction and source layout; pixel_outputs:
# each order's y and du stored at its row-major pixels and summed by XLA, dy read per source; y_in_compute_dtype:
# each order's y stored in bf16 (at bf16 compute) instead of f32, summed over the orders in f32; register_states: the
# backward's recomputed states of a tile in registers instead of an SMEM tile.
KNOB_SWEEP = ("delta_in_kernel", "merge_in_kernel", "cache_steps", "static_orders", "pixel_outputs",
              "y_in_compute_dtype", "register_states")
# Knobs of the fused core alone (the plain scan's plan has one source, no low-rank delta and one walk direction):
# --sweep plans that name one time only the fused core.
FUSED_ONLY_KNOBS = {"delta_in_kernel", "merge_in_kernel", "static_orders", "pixel_outputs", "y_in_compute_dtype"}


# --profile: (op, plan) pairs, the default plans (approx_math, direct_store) and the exact-math ones.
PROFILE_VARIANTS = [("scan", {}), ("ss2d_core", {}),
                    ("scan", dict(approx_math=False)), ("ss2d_core", dict(approx_math=False)),
                    ("ss2d_core", dict(delta_in_kernel=False))]


def _supported(ss2d_api, impl):
    import importlib
    if impl in ss2d_api._FUSED:
        return importlib.import_module(ss2d_api._FUSED[impl]).is_supported()
    return impl in api.available_implementations()


def timeit(fn, *args, warmup=3, reps=20, calls=1):
    """Median milliseconds of fn(*args) (benchmarks/common.py's timing: calls=1 synchronised, else back-to-back)."""
    return median(time_fn(lambda: fn(*args), warmup=warmup, repeats=reps, calls=calls)) * 1e3


# Back-to-back calls per timed repeat for the `*_b2b_ms` fields: the device's time per call with the host's dispatch
# and sync hidden, the like-for-like figure against the official CUDA-event timings.
B2B_CALLS = 10


def _times(fwd, grad, args):
    """fwd_ms / fwd_bwd_ms (each call synchronised) and fwd_b2b_ms / fwd_bwd_b2b_ms (B2B_CALLS back-to-back)."""
    return dict(fwd_ms=round(timeit(fwd, *args), 4), fwd_bwd_ms=round(timeit(grad, *args), 4),
                fwd_b2b_ms=round(timeit(fwd, *args, reps=10, calls=B2B_CALLS), 4),
                fwd_bwd_b2b_ms=round(timeit(grad, *args, reps=10, calls=B2B_CALLS), 4))


def kernel_case(op_name, impl, shape, dtype_name, plan=None):
    """(op, args) of one timed case, on fresh random inputs.

    op_name "scan": shape (b, k, c, n, length), the plain op, channel-major in and out; "ss2d_core": shape
    (b, hw, d, n), the fused core on a square hw x hw map. With a `plan` (the sweep's or the profile's tile / unroll /
    direct_store / approx_math knobs, {} for the defaults) op calls the Mosaic GPU kernel directly, else the public
    API with implementation=impl."""
    dtype = DTYPES[dtype_name]
    if op_name == "scan":
        args = make_inputs(0, *shape, dtype)
        if plan is not None:
            from pallas_kernels.selective_scan import pallas_mosaic_gpu as mod
            return (lambda *a: mod.selective_scan(*a, **plan)), args
        return (lambda *a: api.selective_scan(*a, implementation=impl)), args
    b, hw, d, n = shape
    args = make_core_inputs(0, b, hw, hw, d, n, -(-d // 16), dtype)  # dt rank "auto"
    if plan is not None:
        from pallas_kernels.ss2d import pallas_mosaic_gpu as fused
        return (lambda *a: fused.ss2d_core(*a, **plan)), args
    from pallas_kernels.ss2d import ss2d_core
    return (lambda *a: ss2d_core(*a, implementation=impl)), args


def _fwd_and_grad(op, args):
    """The jitted forward and the jitted gradient of sum(op) in every argument."""
    return jax.jit(op), jax.jit(jax.grad(lambda *a: jnp.sum(op(*a)), tuple(range(len(args)))))


def bench_scan(impl, b, k, c, n, length, dtype_name, plan=None):
    """plan: the Mosaic GPU kernel's knobs ({} for its defaults, checked like the sweeps), or None for `impl`."""
    op, args = kernel_case("scan", impl, (b, k, c, n, length), dtype_name, plan)
    fwd, grad = _fwd_and_grad(op, args)
    out = _times(fwd, grad, args)
    isz = jnp.dtype(DTYPES[dtype_name]).itemsize
    nbytes = 2 * b * k * c * length * isz + 2 * b * k * n * length * isz + 4 * b * k * c * length
    out["fwd_GBps"] = round(nbytes / out["fwd_b2b_ms"] / 1e6, 1)
    if plan is not None:
        out.update(_check_variant(("scan", b, k, c, n, length, dtype_name), fwd, grad, selective_scan_reference, args))
    return out


_REFERENCE_OUTPUTS = {}  # key -> the XLA reference's [y, *grads], and on the fp32-upcast inputs (or None): per shape


def _check_variant(key, fwd, grad, reference, args, tol=1e-2):
    """A swept kernel variant against the XLA reference (sum-of-outputs cotangent), by benchmarks/gpu_kernel_tests.py's
    rules: fp32 inputs, the max relative error over y and every gradient below `tol`; bf16 inputs, each output's error
    against the fp32 result (the reference on the upcast inputs) below max(tol, 2 x the bf16 reference's own).
    max_rel_err is against the reference in the inputs' dtype either way. A check that cannot run (the XLA reference
    at d_state 16 and batch 128 asks for 40 GiB at once) is reported as check_error, keeping the variant's times."""
    try:
        return _compare_to_reference(key, fwd, grad, reference, args, tol)
    except Exception as e:  # noqa: BLE001 - the times were taken before the check
        _REFERENCE_OUTPUTS.pop(key, None)
        return dict(check_error=f"{type(e).__name__}: {str(e)[:200]}")


def _compare_to_reference(key, fwd, grad, reference, args, tol):
    if key not in _REFERENCE_OUTPUTS:
        argnums = tuple(range(len(args)))
        ref_fwd, ref_grad = jax.jit(reference), jax.jit(jax.grad(lambda *a: jnp.sum(reference(*a)), argnums))
        outputs = lambda a: [ref_fwd(*a), *ref_grad(*a)]  # noqa: E731
        bf16 = any(a.dtype == jnp.bfloat16 for a in args)
        _REFERENCE_OUTPUTS[key] = (outputs(args), outputs(upcast_bf16(args)) if bf16 else None)
    want, exact = _REFERENCE_OUTPUTS[key]
    got = [fwd(*args), *grad(*args)]
    out = dict(max_rel_err=max(rel_err(a, w) for a, w in zip(got, want)))
    if exact is None:
        return dict(out, checked=bool(out["max_rel_err"] < tol))
    vs_fp32 = {i: rel_err(a, e) for i, (a, e) in enumerate(zip(got, exact))}
    ref_vs_fp32 = {i: rel_err(w, e) for i, (w, e) in enumerate(zip(want, exact))}
    return dict(out, max_rel_err_vs_fp32=max(vs_fp32.values()), rule="vs_fp32",
                checked=passes_vs_fp32(vs_fp32, ref_vs_fp32, dict.fromkeys(vs_fp32, tol)))


def _check_cell(r):
    if "check_error" in r:
        return f"unchecked ({r['check_error'][:40]})"
    if "checked" not in r:
        return ""
    vs_fp32 = f" (vs fp32 {r['max_rel_err_vs_fp32']:.1e})" if "max_rel_err_vs_fp32" in r else ""
    return f"{'ok' if r['checked'] else 'WRONG'} {r['max_rel_err']:.1e}{vs_fp32}"


def bench_ss2d(impl, b, hw, d, n, dtype_name, plan=None):
    """plan: as in `bench_scan`, for the fused core."""
    op, args = kernel_case("ss2d_core", impl, (b, hw, d, n), dtype_name, plan)
    fwd, grad = _fwd_and_grad(op, args)
    out = _times(fwd, grad, args)
    if plan is not None:
        from pallas_kernels.ss2d import ss2d_core_reference
        ref = lambda *a: ss2d_core_reference(*a, scan_implementation="xla")  # noqa: E731
        out.update(_check_variant(("ss2d", b, hw, d, n, dtype_name), fwd, grad, ref, args))
    return out


def profile_case(op_name, b, hw, d, dtype_name, reps=10, plan=None):
    """Where a stage's time goes: a jax.profiler trace of `reps` calls of the forward and of the forward+backward,
    device milliseconds per call by category (the Mosaic GPU kernels against XLA's fusions and copies) and top ops.
    op_name: "scan" (the plain op, channel-major in and out, K = 4) or "ss2d_core" (the fused core); N = 1."""
    from profile_step import hlo_of, trace_ops

    shape = (b, 4, d, 1, hw * hw) if op_name == "scan" else (b, hw, d, 1)
    op, args = kernel_case(op_name, "", shape, dtype_name, plan={} if plan is None else plan)
    out = {}
    for part, fn in zip(("fwd", "fwd_bwd"), _fwd_and_grad(op, args)):
        hlo = fn.lower(*args).compile().as_text()
        wall = timeit(fn, *args)
        t = trace_ops(lambda: fn(*args), reps, hlo)
        out[part] = dict(wall_ms=round(wall, 4), device_ms=round(t["device_ms"], 4),
                         categories={c: round(ms, 4) for c, ms in t["categories"].items()},
                         top_ops=[dict(op=o, category=c, ms=round(ms, 4), hlo=hlo_of(hlo, o))
                                  for ms, o, c in t["per_op"][:10]])
    return out


def profile_md(records: list[dict]) -> str:
    """The --profile records as a markdown report: wall against traced device time, and where the device time went."""
    prof = [r for r in records if "profile" in r]
    if not prof:
        return "# Scan profile\n\nNo profile records.\n"
    r0 = prof[0]
    side = int(round(r0["L"] ** 0.5))
    title = f"# Scan and SS2D core profile at {side}x{side}, {r0['device']}, jax {r0['jax_version']}, {r0['date']}"
    lines = [title, "",
             f"Command: `{r0.get('command', '?')}`. B {r0['B']}, K {r0['K']}, C {r0['C']}, N {r0['N']}, L {r0['L']} "
             f"({side}x{side}), {r0['dtype']}. Wall: median of 20 "
             "synchronised calls; device: the traced GPU time per call (10 calls), summed per HLO op and category.", "",
             "| op / plan | part | wall ms | device ms | device ms by category | errors |", "|---|---|---|---|---|---|"]
    for r in records:
        if "error" in r and "profile" not in r and r.get("impl", "").startswith(("scan/", "ss2d_core/mosaic")):
            lines.append(f"| {r['impl']} | | | | | {r['error'][:80]} |")
        for part, pr in r.get("profile", {}).items():
            cats = ", ".join(f"{c} {ms:.3f}" for c, ms in pr["categories"].items())
            lines.append(f"| {r['impl']} | {part} | {pr['wall_ms']:.3f} | {pr['device_ms']:.3f} | {cats} | |")
    lines += ["", "Top ops (device ms per call):", ""]
    for r in prof:
        for part, pr in r["profile"].items():
            ops = "; ".join(f"`{o['op']}` ({o['category']}) {o['ms']:.3f}" for o in pr["top_ops"][:6])
            lines.append(f"- {r['impl']} {part}: {ops}")
    return "\n".join(lines) + "\n"


def bench_model(impl, batch=128, res=224):
    import vmamba_jax
    model = vmamba_jax.create_model("vmamba_tiny_s1l8", dtype=jnp.bfloat16, scan_implementation=impl)
    x = jax.random.normal(jax.random.PRNGKey(0), (batch, res, res, 3))
    variables = jax.jit(model.init)(jax.random.PRNGKey(1), x[:1])
    fwd = jax.jit(lambda v, x: model.apply(v, x, train=False))
    ms = timeit(fwd, variables, x, warmup=2, reps=10)
    return dict(fwd_ms=round(ms, 3), img_per_s=round(batch / ms * 1e3, 1))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--impls", default=None, help="comma list; default: every supported implementation but 'xla'")
    p.add_argument("--out", default=None)
    p.add_argument("--skip-model", action="store_true")
    p.add_argument("--sweep", action="store_true",
                   help="only time the GPU kernels' (seq_tile, bwd_seq_tile, unroll) variants at stage 1, bf16")
    p.add_argument("--plans", default=None,
                   help="--sweep these plans instead of SWEEP: a JSON list of _Plan knob dicts, "
                        "e.g. '[{\"bwd_seq_tile\": 8}]' (unnamed knobs keep their defaults)")
    p.add_argument("--sweep-d-state", type=int, default=1,
                   help="--sweep at this d_state (16: the d_state of VMamba v0/v2 and Res-VMamba)")
    p.add_argument("--profile", action="store_true",
                   help="only trace the stage-1 (bf16) plain scan and fused core, default and PROFILE_VARIANTS plans: "
                        "device time per op category")
    p.add_argument("--profile-plans", default=None,
                   help="--profile the fused core with these plans instead of PROFILE_VARIANTS: a JSON list of "
                        "_Plan knob dicts, e.g. '[{}, {\"static_orders\": true}]'")
    p.add_argument("--knob-sweep", default=None, choices=KNOB_SWEEP,
                   help="only time the fused core at VMamba-T's four stages with this on/off knob off and on, each "
                        "checked, beside the plain kernel's composition: delta_in_kernel (delta formed in the kernel "
                        "or by XLA), merge_in_kernel (the orders summed by the kernel's atomic adds or by XLA), "
                        "cache_steps (the backward's per-step delta and decays kept in SMEM or formed again), "
                        "static_orders (one compiled walk per order or one with its direction traced), "
                        "pixel_outputs (each order's outputs at its pixels, summed by XLA without transposes), "
                        "y_in_compute_dtype (each order's y stored in bf16, summed in f32), "
                        "register_states (the backward's recomputed states in registers or in SMEM)")
    p.add_argument("--split-sweep", action="store_true",
                   help="only time the plain scan and the fused core at stages 1-2 with the walk split into "
                        "SPLIT_SWEEP's numbers of blocks, each checked")
    p.add_argument("--profile-map", type=int, default=56, choices=[hw for hw, _ in STAGES],
                   help="--profile at this VMamba-T stage (map side; its channels from STAGES): 14 is where the "
                        "fused core's forward+backward lost to the plain kernel's composition "
                        "(results/scan_h200_f813356.md)")
    p.add_argument("--model-only", action="store_true",
                   help="only VMamba-T's whole-model inference throughput, per --ss2d-impls core")
    p.add_argument("--ss2d-impls", default="fused_mosaic_gpu,pallas_mosaic_gpu,associative",
                   help="SS2D cores timed at VMamba-T's four stages (those not supported here are skipped)")
    args = p.parse_args()
    if args.profile:
        disable_command_buffers()  # else the trace shows each call as one CUDA graph
    command = "python benchmarks/scan_bench.py " + " ".join(sys.argv[1:])
    impls = args.impls.split(",") if args.impls else [i for i in api.available_implementations() if i != "xla"]
    dev = jax.devices()[0]
    env = dict(device=dev.device_kind, jax_version=jax.__version__, date=datetime.date.today().isoformat())
    print(json.dumps(env), "impls:", impls, flush=True)
    records = []

    def run(kind, impl, shape, fn):
        rec = dict(impl=impl, **shape, **env, command=command)
        try:
            rec.update(fn())
        except Exception as e:  # noqa: BLE001 - keep the other measurements
            rec["error"] = f"{type(e).__name__}: {str(e)[:500]}"
            print(traceback.format_exc()[-1500:], flush=True)
        records.append(rec)
        print(kind, json.dumps(rec), flush=True)

    if args.profile:
        hw, c = args.profile_map, dict(STAGES)[args.profile_map]
        stage = dict(B=128, K=4, C=c, N=1, L=hw * hw, dtype="bf16")
        for op_name, kw in ([("ss2d_core", kw) for kw in json.loads(args.profile_plans)] if args.profile_plans
                            else PROFILE_VARIANTS):
            run("profile", f"{op_name}/mosaic_gpu{kw}", stage,
                lambda: dict(profile=profile_case(op_name, 128, hw, c, "bf16", plan=kw)))
        impls, args.skip_model = [], True
    if args.sweep:
        n = args.sweep_d_state
        stage1 = dict(B=128, K=4, C=96, N=n, L=3136, dtype="bf16")
        for kw in json.loads(args.plans) if args.plans else SWEEP:
            if not FUSED_ONLY_KNOBS & kw.keys():
                run("sweep", f"pallas_mosaic_gpu{kw}", stage1,
                    lambda: bench_scan("", 128, 4, 96, n, 3136, "bf16", plan=kw))
            run("sweep", f"ss2d_core/fused_mosaic_gpu{kw}", stage1,
                lambda: bench_ss2d("", 128, 56, 96, n, "bf16", plan=kw))
        impls, args.skip_model = [], True
    if args.knob_sweep:
        for hw, c in STAGES:
            shape = dict(B=128, K=4, C=c, N=1, L=hw * hw, dtype="bf16")
            for kw in ({args.knob_sweep: True}, {args.knob_sweep: False}):
                run("knob", f"ss2d_core/fused_mosaic_gpu{kw}", shape,
                    lambda: bench_ss2d("", 128, hw, c, 1, "bf16", plan=kw))
            run("knob", "ss2d_core/pallas_mosaic_gpu", shape,
                lambda: bench_ss2d("pallas_mosaic_gpu", 128, hw, c, 1, "bf16"))
        impls, args.skip_model = [], True
    if args.split_sweep:
        for (hw, c), counts in SPLIT_SWEEP.items():
            shape = dict(B=128, K=4, C=c, N=1, L=hw * hw, dtype="bf16")
            for splits in counts:
                run("splits", f"pallas_mosaic_gpu{{'splits': {splits}}}", shape,
                    lambda: bench_scan("", 128, 4, c, 1, hw * hw, "bf16", plan=dict(splits=splits)))
                run("splits", f"ss2d_core/fused_mosaic_gpu{{'splits': {splits}}}", shape,
                    lambda: bench_ss2d("", 128, hw, c, 1, "bf16", plan=dict(splits=splits)))
        impls, args.skip_model = [], True
    if args.model_only:
        impls = []
    for impl in impls:
        for (b, k, c, n, length, dt) in SHAPES:
            shape = dict(B=b, K=k, C=c, N=n, L=length, dtype=dt)
            run("scan", impl, shape, lambda: bench_scan(impl, b, k, c, n, length, dt))
    from pallas_kernels.ss2d import api as ss2d_api
    only = args.sweep or args.profile or args.knob_sweep or args.split_sweep
    ss2d_impls = [] if only else [i for i in args.ss2d_impls.split(",") if _supported(ss2d_api, i)]
    for impl in [] if args.model_only else ss2d_impls:
        for hw, c in STAGES:
            if impl == "associative" and hw != 56:
                continue
            run("ss2d", "ss2d_core/" + impl, dict(B=128, K=4, C=c, N=1, L=hw * hw, dtype="bf16"),
                lambda: bench_ss2d(impl, 128, hw, c, 1, "bf16"))
    if not args.skip_model:
        for impl in dict.fromkeys(ss2d_impls + impls):
            run("model", "vmamba_tiny_s1l8/" + impl, dict(B=128, resolution=224, dtype="bf16"),
                lambda: bench_model(impl))

    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(records, indent=1))
        if args.profile:
            Path(args.out).with_suffix(".md").write_text(profile_md(records))
    print("\n| impl | B | K | C | N | L | dtype | fwd ms | fwd+bwd ms | back-to-back fwd / fwd+bwd ms | "
          "official fwd / fwd+bwd ms | sweep check |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in records:
        if "L" not in r:
            continue
        off = OFFICIAL.get((r["B"], r["K"], r["C"], r["N"], r["L"], r["dtype"]), ("", ""))
        print(f"| {r['impl']} | {r['B']} | {r['K']} | {r['C']} | {r['N']} | {r['L']} | {r['dtype']} | "
              f"{r.get('fwd_ms', r.get('error', '')[:40])} | {r.get('fwd_bwd_ms', '')} | "
              f"{r.get('fwd_b2b_ms', '')} / {r.get('fwd_bwd_b2b_ms', '')} | {off[0]} / {off[1]} | "
              f"{_check_cell(r)} |")
    for r in records:
        for part, pr in r.get("profile", {}).items():
            cats = ", ".join(f"{c} {ms:.3f}" for c, ms in pr["categories"].items())
            print(f"| profile {r['impl']} {part} | wall {pr['wall_ms']:.3f} ms | device {pr['device_ms']:.3f} ms | "
                  f"{cats} |")
    for r in records:
        if "img_per_s" in r or ("resolution" in r):
            print(f"| {r['impl']} | 224px b128 bf16 inference | {r.get('img_per_s', r.get('error', '')[:60])} img/s"
                  " (official 2846) |")


if __name__ == "__main__":
    main()
