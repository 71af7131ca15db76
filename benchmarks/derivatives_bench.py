"""Inference and training throughput of the derivatives (MSVMamba-v3-T, Res-VMamba-S) against VMamba-T (s1l8).

    python benchmarks/derivatives_bench.py                                     # 224, batch 128, bf16; all three
    python benchmarks/derivatives_bench.py --batch 2 --resolution 32 --steps 1 --warmup 1 --repeats 1   # CPU smoke

Per model, in its own subprocess (so a failure or a timeout costs only that row, and the peak memory is its own):
  * inference: jit `model.apply` on device-resident random images (benchmarks/model_throughput.py `bench`);
  * training: the full train step of train.py (mixup/cutmix on device, drop path, soft-target CE, backward, clip,
    AdamW, EMA; benchmarks/train_throughput.py `measure`).
Scan implementation: auto (the best selective scan for the backend). MSVMamba's MS2D calls `selective_scan` itself
(one fused call per block for its full-res and concatenated low-res routes), so its row names the scan it used.
Res-VMamba runs in its default learned-shortcut mode. Results are rewritten after every model to
<out_dir>/derivatives_<device>.{json,md}, so a cut-off run keeps its finished rows.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MODELS = ("vmamba_tiny_s1l8", "msvmamba_v3_tiny", "resvmamba_small")
BASELINE = "vmamba_tiny_s1l8"


def measure_one(name: str, a) -> dict:
    import jax
    import jax.numpy as jnp

    import vmamba_jax
    from benchmarks.model_throughput import bench
    from benchmarks.train_throughput import measure
    from pallas_kernels.selective_scan import resolve_implementation as resolve_scan

    impl = a.impl
    fwd = bench(name, impl, a.batch, a.resolution, jnp.dtype(a.dtype), a.repeats)
    train = measure(name, a.batch, a.steps, a.warmup, impl, a.resolution, a.dtype)
    model = vmamba_jax.create_model(name)
    return dict(model=name, params_m=train["params"] / 1e6,
                gflops=vmamba_jax.flops(model, a.resolution) / 1e9,
                infer_img_s=fwd["img_per_s"], infer_ms=fwd["ms_per_batch"],
                train_img_s=train["img_per_s"], train_ms=train["step_ms"],
                train_peak_gib=None if train["peak_gib"] != train["peak_gib"] else train["peak_gib"],   # NaN on CPU
                train_compile_s=train["compile_s"], loss=train["loss"],
                scan_impl=resolve_scan(impl), ss2d_impl=train["impl"], device=jax.devices()[0].device_kind,
                jax_version=jax.__version__)


def write(rows: list[dict], a, kind: str, tag: str) -> str:
    os.makedirs(a.out_dir, exist_ok=True)
    base = os.path.join(a.out_dir, f"derivatives_{tag}")
    with open(base + ".json", "w") as f:
        json.dump(rows, f, indent=2)
    ref = next((r for r in rows if r["model"] == BASELINE and "infer_img_s" in r), None)
    import jax
    cmd = "python benchmarks/derivatives_bench.py " + " ".join(sys.argv[1:])
    md = [f"# Derivatives throughput, {kind}, jax {jax.__version__}, {datetime.date.today().isoformat()}", "",
          f"Command: `{cmd.strip()}`. Batch {a.batch} at {a.resolution}x{a.resolution}, {a.dtype} compute, fp32 "
          f"params; inference = jit apply (median of {a.repeats}); training = train.py's full step ({a.warmup} "
          f"warm-up, {a.steps} timed steps), synthetic on-device batches. Ratios are against {BASELINE}.", "",
          "| model | params M | GFLOPs | infer img/s | vs VMamba-T | train img/s | vs VMamba-T | train peak GiB | "
          "scan impl |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "infer_img_s" not in r:
            md.append(f"| {r['model']} | | | failed: {r.get('error', '?')[:80]!r} | | | | | |")
            continue
        vi = f"{r['infer_img_s'] / ref['infer_img_s']:.2f}x" if ref else ""
        vt = f"{r['train_img_s'] / ref['train_img_s']:.2f}x" if ref else ""
        md.append(f"| {r['model']} | {r['params_m']:.2f} | {r['gflops']:.2f} | {r['infer_img_s']:.0f} | {vi} | "
                  f"{r['train_img_s']:.0f} | {vt} | {r['train_peak_gib'] or float('nan'):.1f} | {r['scan_impl']} |")
    with open(base + ".md", "w") as f:
        f.write("\n".join(md) + "\n")
    return "\n".join(md)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--impl", default=None, help="selective-scan implementation (default: auto)")
    p.add_argument("--timeout_s", type=float, default=240, help="per model")
    p.add_argument("--budget_s", type=float, default=560, help="start no model after this many seconds")
    p.add_argument("--out_dir", default=os.path.join(ROOT, "benchmarks", "results"))
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: measure one model, print JSON
    a = p.parse_args()
    if a.one:
        print("RESULT " + json.dumps(measure_one(a.one, a)), flush=True)
        return

    import jax

    from benchmarks.common import device_tag

    kind, tag = device_tag()
    rows, t_start = [], time.perf_counter()
    for name in a.models.split(","):
        left = a.budget_s - (time.perf_counter() - t_start)
        if left < 30:
            rows.append(dict(model=name, error=f"not run: the {a.budget_s:.0f} s budget was spent"))
            continue
        cmd = [sys.executable, os.path.abspath(__file__), "--one", name] + sys.argv[1:]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=min(a.timeout_s, left))
            lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
            row = json.loads(lines[-1][7:]) if res.returncode == 0 and lines else \
                dict(model=name, error=(res.stderr or res.stdout)[-1500:])
        except subprocess.TimeoutExpired:
            row = dict(model=name, error=f"timed out after {min(a.timeout_s, left):.0f} s")
        row["date"] = datetime.date.today().isoformat()
        rows.append(row)
        print(json.dumps(row), flush=True)
        write(rows, a, kind, tag)
    print(write(rows, a, kind, tag))


if __name__ == "__main__":
    main()
