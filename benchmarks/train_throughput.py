"""Training throughput of VMamba-T/S/B at 224, batch 128, bf16 compute, full train step (mixup/cutmix on device,
forward with drop path, label-smoothed soft-target CE, backward, clip, AdamW, EMA), synthetic on-device batches.

    python benchmarks/train_throughput.py                       # T, S, B; writes benchmarks/results/train_throughput_<device>.{json,md}
    python benchmarks/train_throughput.py --models T --steps 5  # quick
    python benchmarks/train_throughput.py --models B --merge benchmarks/results/train_throughput_h200.json
                                                                # add a row to an earlier table (one model a call)

Each model runs in its own subprocess so that the peak memory (`memory_stats()["peak_bytes_in_use"]`) is its own.
The subprocesses start together and compile in parallel (compile time is host work: minutes per model on the H200),
then take turns on the GPU for their timed steps (`benchmarks.common.run_in_turns`); `compile_s` is a model's time to
its first step while the others compiled beside it, `compile_parts_s` splits it (lower / XLA compile / first step,
where the Mosaic GPU kernels compile), `turn` says when it was ready and timed.
The scan implementation is the best available (`scan_implementation=None` -> auto); if that fails to compile or run,
the row is retried with "associative" and the error is recorded. Targets: the official PyTorch training step on an
H100 (spec/targets.md): T 1050, S 680, B 542 img/s; the goal is 1.3x.
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

MODELS = {"T": ("vmamba_tiny_s1l8", 1050), "S": ("vmamba_small_s1l20", 680), "B": ("vmamba_base_s1l20", 542),
          "S_s2l15": ("vmamba_small_s2l15", 525), "B_s2l15": ("vmamba_base_s2l15", 413)}


def setup_train_step(name: str, batch: int, impl: str | None, resolution: int, dtype: str, scan_blocks: bool = False):
    """(step, state, batch, model): train.py's jitted step for `name` with the official recipe, its initial state and
    one synthetic on-device batch. scan_blocks: each stage's blocks as one nn.scan (`VSSLayer.scan_blocks`)."""
    import jax
    import jax.numpy as jnp

    from vmamba_jax.train.config import default_config
    from vmamba_jax.train.loop import build_model
    from vmamba_jax.train.mesh import batch_sharding, make_mesh, state_shardings
    from vmamba_jax.train.optimizer import make_optimizer
    from vmamba_jax.train.state import create_train_state
    from vmamba_jax.train.steps import make_train_step

    cfg = default_config()  # the official recipe: mixup/cutmix, smoothing, clip 5, AdamW, EMA 0.9999
    cfg.model.name, cfg.dtype, cfg.scan_implementation = name, dtype, impl
    cfg.scan_blocks = scan_blocks
    model = build_model(cfg, 1000)
    sample = jnp.zeros((1, resolution, resolution, 3))
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), sample)["params"])
    tx, sched = make_optimizer(cfg.optim, params, global_batch=batch, steps_per_epoch=1000, total_steps=300_000)
    mesh = make_mesh(1)
    init = lambda rng: create_train_state(model, tx, rng, sample)
    sh = state_shardings(jax.eval_shape(init, jax.random.PRNGKey(0)), mesh)
    state = jax.jit(init, out_shardings=sh)(jax.random.PRNGKey(0))
    bsh = batch_sharding(mesh)
    step = make_train_step(model, tx, sched, cfg, num_classes=1000, state_sharding=sh, batch_sharding=bsh, mesh=mesh)
    k1, k2 = jax.random.split(jax.random.PRNGKey(1))
    make = jax.jit(lambda k1, k2: {"image": jax.random.normal(k1, (batch, resolution, resolution, 3)),
                                   "label": jax.random.randint(k2, (batch,), 0, 1000),
                                   "corrupt": jnp.zeros((batch,), jnp.int32)}, out_shardings=bsh)
    return step, state, make(k1, k2), model


def measure(name: str, batch: int, steps: int, warmup: int, impl: str | None, resolution: int, dtype: str,
            scan_blocks: bool = False) -> dict:
    """Train-step throughput of `name`: compile, first step, warm-up, then, in this process' turn on the GPU
    (`benchmarks.common.run_in_turns`), `steps` timed steps."""
    import jax

    from benchmarks.common import scan_impl_name, wait_for_turn

    step, state, data, model = setup_train_step(name, batch, impl, resolution, dtype, scan_blocks)
    # Compile time in three parts, to see where minutes go: tracing + lowering (Python, Pallas kernel lowering), XLA's
    # compile (or the persistent cache's load), and the first step beyond a steady one (work deferred to the first
    # call, e.g. compiling Mosaic GPU kernels, which the XLA cache does not hold).
    t0 = time.perf_counter()
    lowered = step.lower(state, data)
    t1 = time.perf_counter()
    step = lowered.compile()
    t2 = time.perf_counter()
    state, m = step(state, data)
    jax.block_until_ready(m)
    t3 = time.perf_counter()
    compile_s, parts = t3 - t0, {"lower": t1 - t0, "xla_compile": t2 - t1, "first_step": t3 - t2}
    for _ in range(warmup):
        state, m = step(state, data)
    jax.block_until_ready(m)
    waited_s = wait_for_turn()
    t0 = time.perf_counter()
    for _ in range(steps):
        state, m = step(state, data)
    jax.block_until_ready((state.params, m))
    dt = time.perf_counter() - t0
    stats = jax.devices()[0].memory_stats() or {}
    return {"img_per_s": steps * batch / dt, "step_ms": 1000 * dt / steps, "compile_s": compile_s,
            "compile_parts_s": {**parts, "first_step_extra": parts["first_step"] - dt / steps}, "waited_s": waited_s,
            "peak_gib": stats.get("peak_bytes_in_use", float("nan")) / 2 ** 30, "loss": float(m["loss"]),
            "impl": scan_impl_name(impl, model),
            "params": int(sum(x.size for x in jax.tree.leaves(state.params)))}


def compile_cell(r: dict) -> str:
    """The train step's compile seconds (to its first step): "N par." when N models compiled at once
    (`run_in_turns`); records of the older precompile scheme show its parallel compile plus the timed run's."""
    pre = r.get("precompile") or {}
    if pre.get("rc") == 0:  # the timed run still compiled what the cache missed
        return f"{pre['seconds']:.0f} par." + (f" + {r['compile_s']:.0f}" if "compile_s" in r else "")
    n = (r.get("turn") or {}).get("parallel", 1)
    return f"{r.get('compile_s', float('nan')):.0f}" + (f" ({n} par.)" if n > 1 else "")


def table_row(r: dict) -> str:
    """One markdown row of the results table; a model that did not finish says so instead of a speedup."""
    if "img_per_s" not in r:
        err = next((v for k, v in r.items() if k.startswith("error")), "failed")
        return (f"| {r['model']} | not measured | {r['official_img_per_s']} | - | - | - | "
                f"{err.splitlines()[-1][:60]} | {compile_cell(r)} |")
    ok = "met" if r["speedup_vs_official"] >= 1.3 else "missed"
    return (f"| {r['model']} | {r['img_per_s']:.0f} | {r['official_img_per_s']} | {r['speedup_vs_official']:.2f}x | "
            f"{ok} | {r['peak_gib']:.1f} | {r['impl']} | {compile_cell(r)} |")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--models", default="T,S,B")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--timeout_s", type=float, default=300, help="seconds per model, when --budget_s is not given")
    p.add_argument("--budget_s", type=float, default=None,
                   help="the whole run's seconds (all models compile at once, then take turns); no child outlives it")
    p.add_argument("--out_dir", default=os.path.join(ROOT, "benchmarks", "results"))
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: measure one model, print JSON
    p.add_argument("--merge", default=None, metavar="JSON",
                   help="an earlier train_throughput_<device>.json: keep its rows for the models not re-run here")
    p.add_argument("--impl", default=None,
                   help="scan implementation tried first (default: auto), or one per stage as a comma list (writes "
                        "train_throughput_<device>_stages.{json,md}); 'associative' is the fallback")
    p.add_argument("--scan_blocks", action="store_true",
                   help="each stage's blocks as one nn.scan (fewer ops to compile); writes train_throughput_<device>"
                        "_scan_blocks.{json,md}")
    a = p.parse_args()
    from benchmarks.common import commands_md, device_tag, merge_records, run_in_turns, use_compilation_cache

    use_compilation_cache()  # a retry, or a second call on a warm machine, loads XLA's executables
    if a.one:
        res = measure(a.one, a.batch, a.steps, a.warmup, a.impl, a.resolution, a.dtype, a.scan_blocks)
        print("RESULT " + json.dumps(res))
        return

    import jax

    kind, tag = device_tag()

    def child(name, impl):
        cmd = [sys.executable, __file__, "--one", name, "--batch", str(a.batch), "--steps", str(a.steps),
               "--warmup", str(a.warmup), "--dtype", a.dtype, "--resolution", str(a.resolution)]
        return cmd + (["--impl", impl] if impl else []) + (["--scan_blocks"] if a.scan_blocks else [])

    def result(log):
        lines = [ln for ln in open(log).read().splitlines() if ln.startswith("RESULT ")]
        return json.loads(lines[-1][7:]) if lines else None

    command = "python benchmarks/train_throughput.py " + " ".join(sys.argv[1:])
    t_start, budget = time.perf_counter(), a.budget_s or a.timeout_s * len(a.models.split(","))
    keys = a.models.split(",")
    names = [MODELS[key][0] for key in keys]
    os.makedirs(a.out_dir, exist_ok=True)
    logs = [os.path.join(a.out_dir, f"train_throughput_{n}.log") for n in names]
    # All models compile at once, then take turns on the GPU (run_in_turns); a failed one is retried alone with the
    # associative scan while the budget lasts.
    turns = run_in_turns([child(n, a.impl) for n in names], logs, budget)
    rows = []
    for key, name, log, turn in zip(keys, names, logs, turns):
        row = {"model": name, "batch": a.batch, "resolution": a.resolution, "dtype": a.dtype,
               "scan_blocks": a.scan_blocks, "turn": dict(turn, parallel=len(names))}
        res = result(log)
        if res:
            row.update(res)
        else:
            tail = [ln for ln in open(log).read().splitlines() if "cuda_timer" not in ln][-12:]
            why = "timed out" if turn["rc"] is None else f"exited with {turn['rc']}"
            row["error_" + (a.impl or "auto")] = why + ": " + "\n".join(tail)[-1500:]
            print(f"{name} impl={a.impl or 'auto'} {why}:\n" + "\n".join(tail), flush=True)
            left = budget - (time.perf_counter() - t_start)
            if turn["rc"] is not None and a.impl != "associative" and left > 10:
                retry_log = log.replace(".log", "_associative.log")
                with open(retry_log, "w") as f:
                    try:
                        subprocess.run(child(name, "associative"), stdout=f, stderr=subprocess.STDOUT, timeout=left)
                    except subprocess.TimeoutExpired:
                        pass
                res = result(retry_log)
                if res:
                    row.update(res)
                else:
                    row["error_associative"] = "\n".join(open(retry_log).read().splitlines()[-12:])[-1500:]
        row.update(official_img_per_s=MODELS[key][1], speedup_vs_official=row.get("img_per_s", 0) / MODELS[key][1],
                   device=kind, jax_version=jax.__version__, date=datetime.date.today().isoformat(), command=command)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if not k.startswith("error")}), flush=True)

    rows = merge_records(a.merge, rows, measured=lambda r: "img_per_s" in r)
    base = os.path.join(a.out_dir, f"train_throughput_{tag}" + ("_scan_blocks" if a.scan_blocks else "")
                        + ("_stages" if a.impl and "," in a.impl else ""))
    with open(base + ".json", "w") as f:
        json.dump(rows, f, indent=2)
    md = [f"# Training throughput, {kind}, jax {jax.__version__}, {datetime.date.today().isoformat()}", "",
          f"Batch {a.batch} at {a.resolution}x{a.resolution}, {a.dtype} compute, fp32 params; full train step "
          "(mixup/cutmix, drop path, soft-target CE, backward, clip 5, AdamW, EMA); synthetic on-device batches; "
          f"{a.warmup} warm-up then {a.steps} timed steps"
          + ("; each stage's blocks as one nn.scan (scan_blocks)" if a.scan_blocks else "") + ".", "",
          *commands_md(rows), "",
          "| model | img/s | official (PyTorch, H100) | speedup | goal 1.3x | peak GiB | scan impl | compile s |",
          "|---|---|---|---|---|---|---|---|"]
    md += [table_row(r) for r in rows]
    with open(base + ".md", "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
