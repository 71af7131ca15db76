"""Inference and training throughput of the derivatives (MSVMamba-v3-T, Res-VMamba-S) against VMamba-T (s1l8).

    python benchmarks/derivatives_bench.py                                     # 224, batch 128, bf16; all three
    python benchmarks/derivatives_bench.py --batch 2 --resolution 32 --steps 1 --warmup 1 --repeats 1   # CPU smoke
    python benchmarks/derivatives_bench.py --models resvmamba_small --merge benchmarks/results/derivatives_h200.json
                                           # fill one table over several device calls (a model's compile is minutes)

Each model is measured in its own subprocess (so a failure costs only its row, and the peak memory is its own); the
subprocesses start together, compile in parallel, and take turns on the GPU for their timings
(`benchmarks.common.run_in_turns`):
  * inference: jit `model.apply` on device-resident random images (benchmarks/model_throughput.py `bench`);
  * training: the full train step of train.py (mixup/cutmix on device, drop path, soft-target CE, backward, clip,
    AdamW, EMA; benchmarks/train_throughput.py `measure`).
Scan implementation: auto (the best selective scan for the backend). MSVMamba's MS2D calls `selective_scan` itself
(one fused call per block for its full-res and concatenated low-res routes), so its row names the scan it used.
Res-VMamba runs in its default learned-shortcut mode. Results go to <out_dir>/derivatives_<device>.{json,md}; a model
whose training fails or runs out of time keeps its inference numbers; each child's output is in
<out_dir>/derivatives_<model>.log.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
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
    from benchmarks.model_throughput import bench, forward_fn
    from benchmarks.train_throughput import measure
    from pallas_kernels.selective_scan import resolve_implementation as resolve_scan

    impl, t0 = a.impl, time.perf_counter()
    model = vmamba_jax.create_model(name)
    row = dict(model=name, params_m=vmamba_jax.count_params(jax.eval_shape(
                   model.init, jax.random.key(0), jnp.zeros((1, a.resolution, a.resolution, 3)))) / 1e6,
               gflops=vmamba_jax.flops(model, a.resolution) / 1e9, scan_impl=resolve_scan(impl),
               device=jax.devices()[0].device_kind, jax_version=jax.__version__)
    log = lambda msg: print(f"[{time.perf_counter() - t0:6.1f} s] {name}: {msg}", flush=True)  # noqa: E731
    log("compiling the forward")
    forward = forward_fn(name, impl, a.batch, a.resolution, jnp.dtype(a.dtype))
    jax.block_until_ready(forward[0]())  # compiled before this process' turn on the GPU, like the train step
    log("compiling the train step")

    def time_inference():
        log("my turn: timing")
        fwd = bench(name, impl, a.batch, a.resolution, jnp.dtype(a.dtype), a.repeats, prepared=forward)
        row.update(infer_img_s=fwd["img_per_s"], infer_ms=fwd["ms_per_batch"])
        print("PARTIAL " + json.dumps(row), flush=True)  # the parent keeps this row if training then fails

    train = measure(name, a.batch, a.steps, a.warmup, impl, a.resolution, a.dtype, on_turn=time_inference)
    from vmamba_jax.models.msvmamba import MSVSSM

    return dict(row, train_img_s=train["img_per_s"], train_ms=train["step_ms"],
                train_peak_gib=None if train["peak_gib"] != train["peak_gib"] else train["peak_gib"],   # NaN on CPU
                train_compile_s=train["compile_s"], loss=train["loss"],
                # MS2D calls the selective scan itself: no SS2D core
                ss2d_impl="-" if isinstance(model, MSVSSM) else train["impl"])


def child_cmd(name: str) -> list[str]:
    return [sys.executable, os.path.abspath(__file__), "--one", name] + sys.argv[1:]


def parse_row(name: str, log: str, turn: dict) -> dict:
    """The row a child left in its log (<out_dir>/derivatives_<name>.log): its RESULT, else its PARTIAL (the inference
    numbers) with why training is missing, else why nothing was measured."""
    lines = open(log).read().splitlines()
    done = [json.loads(ln.split(" ", 1)[1]) for ln in lines if ln.startswith(("RESULT ", "PARTIAL "))]
    row = done[-1] if done else dict(model=name)
    if "train_img_s" not in row:
        error = "timed out" if turn["rc"] is None else f"exited with {turn['rc']}"
        tail = [ln for ln in lines if not ln.startswith(("PARTIAL ", "RESULT ")) and "cuda_timer" not in ln][-5:]
        row["error"] = ("training " if done else "") + error + ("; log tail: " + " | ".join(tail) if tail else "")
    return row


def write(rows: list[dict], a, kind: str, tag: str) -> str:
    from benchmarks.common import commands_md, merge_records

    os.makedirs(a.out_dir, exist_ok=True)
    rows = merge_records(a.merge, rows, measured=lambda r: "train_img_s" in r)
    base = os.path.join(a.out_dir, f"derivatives_{tag}")
    with open(base + ".json", "w") as f:
        json.dump(rows, f, indent=2)
    ref = next((r for r in rows if r["model"] == BASELINE and "infer_img_s" in r), None)
    version = next((r["jax_version"] for r in rows if "jax_version" in r), "?")
    md = [f"# Derivatives throughput, {kind}, jax {version}, {datetime.date.today().isoformat()}", "",
          f"Batch {a.batch} at {a.resolution}x{a.resolution}, {a.dtype} compute, fp32 "
          f"params; inference = jit apply (median of {a.repeats}); training = train.py's full step ({a.warmup} "
          f"warm-up, {a.steps} timed steps), synthetic on-device batches. Ratios are against {BASELINE}.", "",
          *commands_md(rows), "",
          "| model | params M | GFLOPs | infer img/s | vs VMamba-T | train img/s | vs VMamba-T | train peak GiB | "
          "SS2D core / selective scan |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "infer_img_s" not in r:
            md.append(f"| {r['model']} | | | failed: {r.get('error', '?')[:80]!r} | | | | | |")
            continue
        vi = f"{r['infer_img_s'] / ref['infer_img_s']:.2f}x" if ref else ""
        if "train_img_s" in r:
            vt = f"{r['train_img_s'] / ref['train_img_s']:.2f}x" if ref and "train_img_s" in ref else ""
            train = f"{r['train_img_s']:.0f} | {vt} | {r['train_peak_gib'] or float('nan'):.1f}"
        else:
            train = f"{r.get('error', '?')[:60]!r} | | "
        md.append(f"| {r['model']} | {r['params_m']:.2f} | {r['gflops']:.2f} | {r['infer_img_s']:.0f} | {vi} | "
                  f"{train} | {r.get('ss2d_impl', '?')} / {r['scan_impl']} |")
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
    p.add_argument("--budget_s", type=float, default=560,
                   help="the whole run's seconds (all models compile at once, then take turns); no child outlives it")
    p.add_argument("--out_dir", default=os.path.join(ROOT, "benchmarks", "results"))
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: measure one model, print JSON
    p.add_argument("--merge", default=None, metavar="JSON",
                   help="an earlier derivatives_<device>.json: keep its rows for the models not re-run here")
    a = p.parse_args()
    from benchmarks.common import device_tag, run_in_turns, use_compilation_cache

    use_compilation_cache()
    if a.one:
        print("RESULT " + json.dumps(measure_one(a.one, a)), flush=True)
        return

    kind, tag = device_tag()
    names = a.models.split(",")
    os.makedirs(a.out_dir, exist_ok=True)
    logs = [os.path.join(a.out_dir, f"derivatives_{n}.log") for n in names]
    turns = run_in_turns([child_cmd(n) for n in names], logs, a.budget_s)
    rows = []
    for name, log, turn in zip(names, logs, turns):
        row = parse_row(name, log, turn)
        row.update(turn=dict(turn, parallel=len(names)), date=datetime.date.today().isoformat(),
                   command="python benchmarks/derivatives_bench.py " + " ".join(sys.argv[1:]))
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(write(rows, a, kind, tag))


if __name__ == "__main__":
    main()
