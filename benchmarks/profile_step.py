"""Where a train step's device time goes, op by op: a jax.profiler trace of a few steps, summed per HLO op.

    python benchmarks/profile_step.py --model T --out_dir /tmp/out              # on the GPU (gpu_suite stage `profile`)
    python benchmarks/profile_step.py --model T --batch 2 --resolution 32       # CPU smoke: host threads stand in

It builds train.py's step (`train_throughput.setup_train_step`: the official recipe, synthetic on-device batch), times
`--steps` unprofiled steps, then traces as many more with `jax.profiler.trace` and reads the trace back with
`jax.profiler.ProfileData`. Every event of the device planes (on CPU: the host plane) that carries an `hlo_op` stat is
summed under that op; the compiled HLO says what each op is: a Mosaic GPU kernel (`mosaic_gpu*` custom call), a
cuDNN convolution, a matmul (cuBLAS custom call or Triton gemm fusion), another fusion, a copy. Writes
profile_<model>_<device>.{json,md}: per-category and top-op milliseconds per step beside the measured step time.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import glob
import json
import os
import re
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*[^=]*?\s([\w\-]+)\(")


def hlo_categories(hlo_text: str) -> dict[str, str]:
    """{instruction name: category} for every instruction of the compiled module's computations."""
    out = {}
    for line in hlo_text.splitlines():
        m = _INSTR.match(line)
        if not m:
            continue
        name, opcode = m.groups()
        target = re.search(r'custom_call_target="([^"]+)"', line)
        low = line.lower()
        if target:
            t = target.group(1).lower()
            cat = ("mosaic_gpu kernel" if "mosaic" in t else "convolution" if "conv" in t else
                   "matmul" if "gemm" in t or "matmul" in t or "cublas" in t else f"custom-call {target.group(1)}")
        elif opcode == "fusion":
            cat = ("matmul" if "gemm" in low or "__triton" in low else
                   "convolution" if "convolution" in low else "fusion")
        elif opcode in ("convolution",):
            cat = "convolution"
        elif opcode in ("dot",):
            cat = "matmul"
        elif opcode in ("copy", "transpose", "copy-start", "copy-done"):
            cat = "copy"
        else:
            cat = opcode
        out[name] = cat
    return out


def hlo_of(hlo_text: str, name: str, max_lines: int = 24) -> str:
    """What op `name` is: its instruction line and, for a fusion, the instructions of the computation it calls (the
    first `max_lines`), so a profile's top ops can be read without the module (e.g. which transpose a fusion does)."""
    lines = hlo_text.splitlines()
    inst = next((line.strip() for line in lines if (m := _INSTR.match(line)) and m.group(1) == name), "")
    called = re.search(r"calls=%?([\w.\-]+)", inst)
    if not called:
        return inst
    body, inside = [], False
    for line in lines:
        if not inside and re.match(rf"^\s*%?{re.escape(called.group(1))}\s", line):
            inside = True
        elif inside:
            if line.strip() == "}":
                break
            body.append(line.strip())
    return "\n".join([inst] + body[:max_lines] + (["..."] if len(body) > max_lines else []))


def op_times(trace_dir: str, plane_prefix: str) -> dict[str, float]:
    """{hlo_op: summed nanoseconds} over the events of every plane whose name starts with `plane_prefix`."""
    from jax.profiler import ProfileData

    paths = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
    if not paths:
        raise FileNotFoundError(f"no .xplane.pb under {trace_dir}")
    totals = collections.defaultdict(float)
    for path in paths:
        for plane in ProfileData.from_file(path).planes:
            if not plane.name.startswith(plane_prefix):
                continue
            lines = list(plane.lines)
            # A device plane may carry both the per-stream kernel lines and a derived "XLA Ops" line: count one.
            ops_line = [ln for ln in lines if ln.name == "XLA Ops"]
            streams = [ln for ln in lines if ln.name.startswith("Stream")]
            for line in ops_line or streams or lines:
                for ev in line.events:
                    op = dict(ev.stats).get("hlo_op")
                    if op:
                        totals[str(op)] += ev.duration_ns
    return dict(totals)


def trace_ops(run, calls: int, hlo_text: str) -> dict:
    """Traces `calls` calls of run() (each returns jax arrays; synchronised at the end) and sums the device time of
    every HLO op per call: {"device_ms", "categories": {category: ms}, "per_op": [(ms, op, category)] largest first}."""
    import jax

    trace_dir = tempfile.mkdtemp(prefix="profile_")
    with jax.profiler.trace(trace_dir):
        out = None
        for _ in range(calls):
            out = run()
        jax.block_until_ready(out)
    on_gpu = jax.devices()[0].platform == "gpu"
    times = op_times(trace_dir, "/device:" if on_gpu else "/host:CPU")
    cats = hlo_categories(hlo_text)
    per_op = sorted(((ns / calls / 1e6, op, cats.get(op, "?")) for op, ns in times.items()), reverse=True)
    by_cat = collections.defaultdict(float)
    for ms, _, cat in per_op:
        by_cat[cat] += ms
    return dict(device_ms=sum(ms for ms, _, _ in per_op),
                categories=dict(sorted(by_cat.items(), key=lambda kv: -kv[1])), per_op=per_op)


def profile_jitted_step(step, state, batch, steps: int, warmup: int) -> dict:
    """A jitted `step(state, batch) -> (state, metrics)`: its unprofiled ms per step, then `trace_ops` of as many more
    steps. Returns step_ms, device_ms, categories, top_ops and the device / version / date."""
    import jax

    hlo = step.lower(state, batch).compile().as_text()
    for _ in range(warmup + 1):
        state, m = step(state, batch)
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, m = step(state, batch)
    jax.block_until_ready(m)
    step_ms = (time.perf_counter() - t0) / steps * 1e3
    box = [state]

    def run():
        box[0], metrics = step(box[0], batch)
        return metrics

    t = trace_ops(run, steps, hlo)
    return dict(step_ms=step_ms, device_ms=t["device_ms"], categories=t["categories"],
                top_ops=[dict(op=op, category=cat, ms=ms) for ms, op, cat in t["per_op"][:60]],
                device=jax.devices()[0].device_kind, jax_version=jax.__version__,
                date=datetime.date.today().isoformat())


def profile(name: str, batch: int, impl: str | None, resolution: int, dtype: str, steps: int, warmup: int) -> dict:
    from benchmarks.train_throughput import setup_train_step

    step, state, data, model = setup_train_step(name, batch, impl, resolution, dtype)
    t = profile_jitted_step(step, state, data, steps, warmup)
    return dict(model=name, batch=batch, resolution=resolution, dtype=dtype, impl=impl, steps=steps, **t)


def main():
    from benchmarks.train_throughput import MODELS

    p = argparse.ArgumentParser()
    p.add_argument("--model", default="T", help=f"one of {sorted(MODELS)} or a registered model name")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--impl", default=None, help="scan implementation (default: auto)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--top", type=int, default=25, help="rows of the per-op table")
    p.add_argument("--out_dir", default=os.path.join(ROOT, "benchmarks", "results"))
    a = p.parse_args()
    from benchmarks.common import device_tag, disable_command_buffers, use_compilation_cache

    disable_command_buffers()  # else the trace shows the step as one CUDA graph
    use_compilation_cache()
    name = MODELS[a.model][0] if a.model in MODELS else a.model
    r = profile(name, a.batch, a.impl, a.resolution, a.dtype, a.steps, a.warmup)
    r["command"] = "python benchmarks/profile_step.py " + " ".join(sys.argv[1:])
    write_profile(r, os.path.join(a.out_dir, f"profile_{name}_{device_tag()[1]}"),
                  f"Batch {a.batch} at {a.resolution}, {a.dtype}; train.py's full step.", a.top)


def write_profile(r: dict, base: str, setting: str, top: int = 25) -> str:
    """<base>.json and <base>.md from a `profile`-style record (step_ms, device_ms, categories, top_ops, command)."""
    os.makedirs(os.path.dirname(base), exist_ok=True)
    with open(base + ".json", "w") as f:
        json.dump(r, f, indent=1)
    md = [f"# Train-step profile: {r['model']}, {r['device']}, jax {r['jax_version']}, {r['date']}", "",
          f"Command: `{r['command']}`. {setting} Measured step {r['step_ms']:.2f} ms (unprofiled); traced device time "
          f"{r['device_ms']:.2f} ms per step (summed over streams: overlapping kernels count twice, gaps not at all).",
          "", "| category | ms / step | share of device time |", "|---|---|---|"]
    md += [f"| {c} | {ms:.2f} | {ms / r['device_ms']:.0%} |" for c, ms in r["categories"].items()]
    md += ["", f"Top {top} ops:", "", "| HLO op | category | ms / step |", "|---|---|---|"]
    md += [f"| `{o['op']}` | {o['category']} | {o['ms']:.3f} |" for o in r["top_ops"][:top]]
    with open(base + ".md", "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))
    return "\n".join(md)

if __name__ == "__main__":
    main()
