"""Resolution scaling: inference throughput, peak memory and FLOPs of VMamba-T, ConvNeXt-T and Swin-T (window scaled
with the input, as the VMamba paper does) from 224 to 1024 px.

    python benchmarks/resolution_scaling.py --out DIR [--dtype bfloat16] [--resolutions 224,384,512,640,768,1024]

Writes DIR/resolution_scaling.json, DIR/resolution_scaling.md and DIR/resolution_scaling.png. Batches follow the
official VMamba-T target table (benchmarks' targets.md): 64 at 224/384, 32 at 512, 16 at 640/768, 8 at 1024.
Configurations run resolution by resolution (all models at 224 first), so a time budget cut still leaves every model
with its low-resolution points; skipped or failed configurations are recorded as such.
`--tiny` shrinks everything (CPU smoke test of the script itself; numbers meaningless).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from vmamba_jax.evaluation.plots import resolution_curves  # noqa: E402
from vmamba_jax.evaluation.report import environment, markdown_table, write_json, write_markdown  # noqa: E402
from vmamba_jax.evaluation.scaling import gflops, linearity, measure, scaled_model  # noqa: E402

MODELS = ("vmamba_tiny_s1l8", "convnext_tiny", "swin_tiny_patch4_window7_224")
BATCH = {224: 64, 384: 64, 512: 32, 640: 16, 768: 16, 1024: 8}


def run(out: str, models, resolutions, dtype, scan_implementation, budget_s: float, tiny: bool,
        iters: int, repeats: int, with_flops: bool = True, flops_only: bool = False) -> dict:
    t_start = time.time()
    rows = []
    impl_used = {}
    tiny_kw = {"vmamba_tiny_s1l8": dict(dims=16, depths=(1, 1, 1, 1)),
               "convnext_tiny": dict(dims=(16, 32, 64, 128), depths=(1, 1, 1, 1)),
               "swin_tiny_patch4_window7_224": dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2))}
    for res in resolutions:
        for name in models:
            row = dict(model=name, resolution=res, batch=1 if tiny else BATCH.get(res, 8), dtype=dtype)
            if time.time() - t_start > budget_s:
                row["skipped"] = f"time budget {budget_s:.0f}s reached"
                rows.append(row)
                continue
            kw = tiny_kw[name] if tiny else {}
            impl = impl_used.get(name, scan_implementation)
            try:
                model = scaled_model(name, res, getattr(jnp, dtype), scan_implementation=impl, **kw)
                if with_flops or flops_only:
                    row["gflops"] = gflops(model, res)
                if flops_only:
                    rows.append(row)
                    continue
                try:
                    row.update(measure(model, res, row["batch"], iters=iters, repeats=repeats))
                except Exception:
                    if not name.startswith("vmamba") or impl == "associative":
                        raise
                    # The team's GPU scan kernel may be unfinished in this tree: fall back, and say so.
                    traceback.print_exc()
                    impl = impl_used[name] = "associative"
                    model = scaled_model(name, res, getattr(jnp, dtype), scan_implementation=impl, **kw)
                    row.update(measure(model, res, row["batch"], iters=iters, repeats=repeats))
                if name.startswith("vmamba"):
                    from pallas_kernels.ss2d import resolve_implementation  # the SS2D core VMamba-T (d_state 1) ran
                    row["scan_implementation"] = resolve_implementation(impl, d_state=1)
                if name.startswith("swin"):
                    row["window_size"] = max(1, res // 32)
            except Exception as e:  # noqa: BLE001 -- record (e.g. out of memory) and go on
                traceback.print_exc()
                row["error"] = f"{type(e).__name__}: {str(e)[:500]}"
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
            rows.append(row)
            write_outputs(out, rows, environment(), dtype, list(models))  # a killed run keeps what it measured

    return write_outputs(out, rows, environment(), dtype, list(models))


def write_outputs(out: str, rows: list[dict], env: dict, dtype: str, models: list[str]) -> dict:
    """JSON, markdown table and plot from measured rows (also used by --merge to join several runs)."""
    lin = {m: {"flops_per_pixel_rel": linearity([r for r in rows if r["model"] == m], "gflops",
                                                lambda r: r["gflops"]),
               "time_per_pixel_rel": linearity([r for r in rows if r["model"] == m], "img_per_s",
                                               lambda r: 1.0 / r["img_per_s"])}
           for m in models}
    result = dict(env=env, dtype=dtype, batches=BATCH, rows=rows, linearity=lin,
                  note="Swin: img_size = resolution, window_size = resolution // 32 (VMamba paper's scaled window). "
                       "Peak memory: XLA buffer assignment of the compiled forward (args + outputs + temps).")
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, "resolution_scaling.json"), result)
    table_rows = []
    for r in rows:
        m = r["model"]
        table_rows.append([m, r["resolution"], r["batch"], r.get("img_per_s"),
                           None if r.get("peak_memory_bytes") is None else r["peak_memory_bytes"] / 2 ** 30,
                           r.get("gflops"), lin[m]["flops_per_pixel_rel"].get(r["resolution"]),
                           lin[m]["time_per_pixel_rel"].get(r["resolution"]),
                           (r.get("error") or r.get("skipped") or
                            (f"scan: {r['scan_implementation']}" if r.get("scan_implementation") else "")
                            + (f"window {r['window_size']}" if r.get("window_size") else ""))[:60]])
    body = markdown_table(["model", "res", "batch", "img/s", "peak mem (GiB)", "GFLOPs", "FLOPs/px vs first",
                           "time/px vs first", "note"], table_rows)
    body += ("\nFLOPs/px and time/px are per-pixel costs relative to the smallest resolution: 1.00 = linear in "
             f"pixels. {result['note']} Compute dtype {dtype}; throughput = batch / median time per call.\n")
    write_markdown(os.path.join(out, "resolution_scaling.md"), "Resolution scaling (inference)", body, env)
    plot_rows = [dict(r) for r in rows if "error" not in r and "skipped" not in r]
    if plot_rows:
        resolution_curves(plot_rows, os.path.join(out, "resolution_scaling.png"),
                          title=f"Inference vs resolution, {env['device']}, {dtype}")
    print(body)
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--resolutions", default="224,384,512,640,768,1024")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--scan-implementation", default=None,
                   help="VMamba selective-scan implementation (default: auto for the backend)")
    p.add_argument("--budget-s", type=float, default=420.0, help="stop starting new configurations after this")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tiny", action="store_true", help="tiny models, batch 1 (CPU smoke test)")
    p.add_argument("--flops-only", action="store_true", help="count FLOPs only (no timing; any machine)")
    p.add_argument("--no-flops", action="store_true",
                   help="skip FLOP counting (device-independent: --merge fills it in on any machine)")
    p.add_argument("--merge", nargs="+", help="join the rows of these resolution_scaling.json files (no measuring)")
    a = p.parse_args(argv)
    if a.merge:
        results = [json.load(open(f)) for f in a.merge]
        rows = {}
        for res in results:  # later files add to / override the fields of earlier ones
            for r in res["rows"]:
                if "skipped" not in r:
                    rows.setdefault((r["model"], r["resolution"]), {}).update(r)
        rows = sorted(rows.values(), key=lambda r: (r["resolution"], a.models.split(",").index(r["model"])))
        for r in rows:  # FLOPs are device-independent: count any that a --no-flops run left out
            if r.get("gflops") is None and "error" not in r:
                r["gflops"] = gflops(scaled_model(r["model"], r["resolution"], getattr(jnp, r["dtype"])),
                                     r["resolution"])
        env = dict(results[0]["env"])
        env["command"] = " ; ".join(dict.fromkeys(res["env"]["command"] for res in results))
        write_outputs(a.out, rows, env, results[0]["dtype"], a.models.split(","))
        return
    run(a.out, a.models.split(","), [int(r) for r in a.resolutions.split(",")], a.dtype, a.scan_implementation,
        a.budget_s, a.tiny, a.iters, a.repeats, with_flops=not a.no_flops, flops_only=a.flops_only)


if __name__ == "__main__":
    main()
