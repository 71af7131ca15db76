"""Inference and training throughput of the derivatives (MSVMamba-v3-T, Res-VMamba-S) against VMamba-T (s1l8).

    python benchmarks/derivatives_bench.py                                     # 224, batch 128, bf16; all three
    python benchmarks/derivatives_bench.py --batch 2 --resolution 32 --steps 1 --warmup 1 --repeats 1   # CPU smoke
    python benchmarks/derivatives_bench.py --models resvmamba_small --merge benchmarks/results/derivatives_h200.json
                                           # fill one table over several device calls (a model's compile is minutes)

Each model is measured by two subprocesses, one per half of its row (so a failure costs only that half, the peak
memory is the train step's own, and the forward's Mosaic GPU kernels do not queue behind the train step's in one
process); all of them start together, compile in parallel, and take turns on the GPU for their timings
(`benchmarks.common.run_in_turns`):
  * inference: jit `model.apply` on device-resident random images (benchmarks/model_throughput.py `bench`);
  * training: the full train step of train.py (mixup/cutmix on device, drop path, soft-target CE, backward, clip,
    AdamW, EMA; benchmarks/train_throughput.py `measure`).
Scan implementation: auto (the best selective scan for the backend). MSVMamba's MS2D calls `selective_scan` itself
(one fused call per block for its full-res and concatenated low-res routes), so its row names the scan it used.
Res-VMamba runs in its default learned-shortcut mode. Results go to <out_dir>/derivatives_<device>.{json,md}; a model
whose training fails or runs out of time keeps its inference numbers; each child's output is in
<out_dir>/derivatives_<model>_{infer,train}.log.
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


PARTS = ("infer", "train")


def measure_part(name: str, part: str, a) -> dict:
    """One half of a model's row, in its own process: "infer" (the forward's throughput, with the parameter count
    and FLOPs) or "train" (the train step's). Each compiles, then times in its turn on the GPU (`run_in_turns`).

    The halves are separate processes because jaxlib compiles a process' Mosaic GPU kernels one at a time: in one
    process, the forward's kernels and the train step's queued behind each other (Res-VMamba-S, 33 blocks at d_state
    16, did not get through both in 540 s on the H200)."""
    import jax
    import jax.numpy as jnp

    import vmamba_jax
    from benchmarks.common import wait_for_turn
    from benchmarks.model_throughput import bench, forward_fn
    from benchmarks.train_throughput import measure
    from pallas_kernels.selective_scan import resolve_implementation as resolve_scan
    from vmamba_jax.models.msvmamba import MSVSSM

    impl, t0 = a.impl, time.perf_counter()
    print(f"{name}: compiling the {'forward' if part == 'infer' else 'train step'}", flush=True)
    if part == "train":
        train = measure(name, a.batch, a.steps, a.warmup, impl, a.resolution, a.dtype)
        model = vmamba_jax.create_model(name)
        return dict(train_img_s=train["img_per_s"], train_ms=train["step_ms"],
                    train_peak_gib=None if train["peak_gib"] != train["peak_gib"] else train["peak_gib"],  # NaN: CPU
                    train_compile_s=train["compile_s"], loss=train["loss"],
                    # MS2D calls the selective scan itself: no SS2D core
                    ss2d_impl="-" if isinstance(model, MSVSSM) else train["impl"])
    forward = forward_fn(name, impl, a.batch, a.resolution, jnp.dtype(a.dtype))
    jax.block_until_ready(forward[0]())
    compile_s = time.perf_counter() - t0
    wait_for_turn()
    fwd = bench(name, impl, a.batch, a.resolution, jnp.dtype(a.dtype), a.repeats, prepared=forward)
    model = vmamba_jax.create_model(name)
    return dict(params_m=vmamba_jax.count_params(jax.eval_shape(
                    model.init, jax.random.key(0), jnp.zeros((1, a.resolution, a.resolution, 3)))) / 1e6,
                gflops=vmamba_jax.flops(model, a.resolution) / 1e9, infer_img_s=fwd["img_per_s"],
                infer_ms=fwd["ms_per_batch"], infer_compile_s=compile_s, scan_impl=resolve_scan(impl),
                device=jax.devices()[0].device_kind, jax_version=jax.__version__)


def child_cmd(name: str, part: str) -> list[str]:
    return [sys.executable, os.path.abspath(__file__), "--one", name, "--part", part] + sys.argv[1:]


def parse_row(name: str, logs: dict[str, str], turns: dict[str, dict]) -> dict:
    """A model's row from its children's logs (<out_dir>/derivatives_<name>_<part>.log, one per part run): their
    RESULT lines, and for a half that left none, why (its `error_<part>`)."""
    row = dict(model=name)
    for part in logs:
        lines = open(logs[part]).read().splitlines()
        done = [json.loads(ln.split(" ", 1)[1]) for ln in lines if ln.startswith("RESULT ")]
        if done:
            row.update(done[-1])
            continue
        error = "timed out" if turns[part]["rc"] is None else f"exited with {turns[part]['rc']}"
        tail = [ln for ln in lines if "cuda_timer" not in ln][-5:]
        row["error_" + part] = error + ("; log tail: " + " | ".join(tail) if tail else "")
    row["turns"] = turns
    return row


def part_keys(part: str, row: dict) -> list[str]:
    """The keys of `row` that one half produced (its RESULT fields, its error, its command)."""
    infer = ("params_m", "gflops", "scan_impl", "device", "jax_version")
    train = ("loss", "ss2d_impl")
    mine = infer if part == "infer" else train
    return [k for k in row if k.startswith(part + "_") or k.startswith("error_" + part) or k in mine
            or k == "command_" + part]


def keep_parts(old: dict | None, new: dict, parts: tuple[str, ...]) -> dict:
    """`new` (a row measured with only `parts`) completed by the halves of `old` (the --merge row) it did not re-run,
    each half keeping the command that measured it (`command_<part>`)."""
    row = dict(new)
    for part in parts:
        row["command_" + part] = new.get("command")
    for part in PARTS:
        if part in parts or old is None:
            continue
        for k in part_keys(part, old):
            row[k] = old[k]
        row.setdefault("command_" + part, old.get("command"))
        row.setdefault("turns", {})[part] = old.get("turns", {}).get(part)
    return row


def command_rows(rows: list[dict]) -> list[dict]:
    """(model, command) pairs for the table's header: one per half where a row's halves came from different calls."""
    out = []
    for r in rows:
        cmds = {part: r.get("command_" + part, r.get("command")) for part in PARTS}
        if len(set(cmds.values())) == 1:
            out.append(dict(model=r["model"], command=r.get("command")))
        else:
            out += [dict(model=f"{r['model']} ({part})", command=cmd) for part, cmd in cmds.items()]
    return out


def write(rows: list[dict], a, kind: str, tag: str) -> str:
    from benchmarks.common import commands_md, merge_records

    os.makedirs(a.out_dir, exist_ok=True)
    rows = merge_records(a.merge, rows, measured=lambda r: "train_img_s" in r)
    base = os.path.join(a.out_dir, f"derivatives_{tag}")
    with open(base + ".json", "w") as f:
        json.dump(rows, f, indent=2)
    ref = next((r for r in rows if r["model"] == BASELINE and "infer_img_s" in r), None)  # for both ratios
    version = next((r["jax_version"] for r in rows if "jax_version" in r), "?")
    md = [f"# Derivatives throughput, {kind}, jax {version}, {datetime.date.today().isoformat()}", "",
          f"Batch {a.batch} at {a.resolution}x{a.resolution}, {a.dtype} compute, fp32 "
          f"params; inference = jit apply (median of {a.repeats}); training = train.py's full step ({a.warmup} "
          f"warm-up, {a.steps} timed steps), synthetic on-device batches. Ratios are against {BASELINE}.", "",
          *commands_md(command_rows(rows)), "",
          "| model | params M | GFLOPs | infer img/s | vs VMamba-T | train img/s | vs VMamba-T | train peak GiB | "
          "SS2D core / selective scan |", "|---|---|---|---|---|---|---|---|---|"]
    def failed(r, part):  # why a half is missing ("error": rows of the one-process-per-model version)
        return f"not measured: {r.get('error_' + part, r.get('error', '?'))[:60]!r}"

    for r in rows:
        if "infer_img_s" in r:
            vi = f"{r['infer_img_s'] / ref['infer_img_s']:.2f}x" if ref else ""
            infer = f"{r['infer_img_s']:.0f} | {vi}"
        else:
            infer = f"{failed(r, 'infer')} | "
        if "train_img_s" in r:
            vt = f"{r['train_img_s'] / ref['train_img_s']:.2f}x" if ref and "train_img_s" in ref else ""
            train = f"{r['train_img_s']:.0f} | {vt} | {r['train_peak_gib'] or float('nan'):.1f}"
        else:
            train = f"{failed(r, 'train')} | | "
        params = f"{r['params_m']:.2f} | {r['gflops']:.2f}" if "params_m" in r else " | "
        md.append(f"| {r['model']} | {params} | {infer} | {train} | {r.get('ss2d_impl', '?')} / "
                  f"{r.get('scan_impl', '?')} |")
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
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: measure one model's --part
    p.add_argument("--part", choices=PARTS, default=None, help=argparse.SUPPRESS)
    p.add_argument("--merge", default=None, metavar="JSON",
                   help="an earlier derivatives_<device>.json: keep its rows for the models not re-run here")
    p.add_argument("--parts", default=",".join(PARTS),
                   help="the halves to measure (infer, train); with --merge the others are kept from its row")
    a = p.parse_args()
    from benchmarks.common import device_tag, read_records, run_in_turns, use_compilation_cache

    use_compilation_cache()
    if a.one:
        print("RESULT " + json.dumps(measure_part(a.one, a.part, a)), flush=True)
        return

    kind, tag = device_tag()
    names = a.models.split(",")
    os.makedirs(a.out_dir, exist_ok=True)
    parts = tuple(x for x in a.parts.split(",") if x)
    if not parts or set(parts) - set(PARTS):
        p.error(f"--parts: a comma list of {PARTS}, got {a.parts!r}")
    old = {r["model"]: r for r in read_records(a.merge)}
    jobs = [(n, part) for n in names for part in parts]
    logs = {job: os.path.join(a.out_dir, f"derivatives_{job[0]}_{job[1]}.log") for job in jobs}
    turns = dict(zip(jobs, run_in_turns([child_cmd(*job) for job in jobs], [logs[j] for j in jobs], a.budget_s)))
    rows = []
    for name in names:
        row = parse_row(name, {part: logs[name, part] for part in parts},
                        {part: dict(turns[name, part], parallel=len(jobs)) for part in parts})
        row.update(date=datetime.date.today().isoformat(),
                   command="python benchmarks/derivatives_bench.py " + " ".join(sys.argv[1:]))
        rows.append(keep_parts(old.get(name), row, parts) if set(parts) != set(PARTS) else row)
        print(json.dumps(row), flush=True)
    print(write(rows, a, kind, tag))


if __name__ == "__main__":
    main()
