"""The Mosaic GPU kernels' PTX, ptxas report and SASS at one VMamba-T stage, and what their time loops execute.

Mosaic GPU writes its compiler stages for every kernel it builds when MOSAIC_GPU_DUMP_{PTX,PTXAS,SASS} are set
(MOSAIC_GPU_DUMP_TO: the folder); this builds the fused SS2D core's forward, training forward and backward (and the
plain scan's) at a stage's shape with the given plan knobs, then reads each kernel's SASS: the registers, and per
loop (a backward branch to a label) its length and opcode mix. The time loops are the longest-running code of
the kernels, so their instruction counts per step are what a faster kernel must cut (an issue-bound walk takes about
instructions x warps / issue rate).

    python benchmarks/kernel_dump.py --out /tmp/dump --plan '{"merge_in_kernel": true}'

Writes <out>/dump/ (the raw files) and <out>/kernel_dump.json (the loop summaries).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys
from pathlib import Path


def loops(sass: str) -> list[dict]:
    """The loops of one SASS listing: for each backward branch `BRA` to a label above it, the instructions between
    them (the loop body, nested loops included) with an opcode histogram."""
    lines = sass.splitlines()
    labels, body = {}, []
    for line in lines:
        m = re.match(r"\s*\.(L_x_\d+):", line)
        if m:
            labels[m.group(1)] = len(body)
            continue
        m = re.match(r"\s*/\*[0-9a-f]+\*/\s+(.*?);", line)
        if m:
            body.append(m.group(1))
    out = []
    for i, ins in enumerate(body):
        m = re.search(r"\bBRA\b.*`?\(?\.(L_x_\d+)", ins)
        if m and m.group(1) in labels and labels[m.group(1)] <= i:
            seg = body[labels[m.group(1)]:i + 1]
            ops = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", s).split()[0].split(".")[0] for s in seg)
            out.append(dict(label=m.group(1), instructions=len(seg), opcodes=dict(ops.most_common())))
    return out


def ptx_loops(ptx: str) -> list[dict]:
    """The loops of one PTX listing (when no SASS was dumped): per backward `bra` to a `$L__BB..` label above it, the
    instructions between them with an opcode histogram (PTX opcodes: a rough map of the SASS, close enough to see
    what a time step spends its instructions on)."""
    labels, body = {}, []
    for line in ptx.splitlines():
        line = line.strip()
        m = re.match(r"(\$L__\w+):", line)
        if m:
            labels[m.group(1)] = len(body)
            continue
        if line and not line.startswith(("//", ".", "{", "}")) and line.endswith(";"):
            body.append(line)
    out = []
    for i, ins in enumerate(body):
        m = re.search(r"\bbra(?:\.uni)?\s+(\$L__\w+);", ins)
        if m and m.group(1) in labels and labels[m.group(1)] <= i:
            seg = body[labels[m.group(1)]:i + 1]
            ops = collections.Counter(re.sub(r"^@%?!?\w+\s+", "", s).split()[0] for s in seg)
            out.append(dict(label=m.group(1), instructions=len(seg), opcodes=dict(ops.most_common())))
    return out


def summarise(dump: Path) -> list[dict]:
    recs = []
    for f in sorted(dump.iterdir()):
        if f.suffix == ".sass" or f.name.endswith(".sass.txt"):
            text = f.read_text(errors="replace")
            recs.append(dict(file=f.name, instructions=len(re.findall(r"/\*[0-9a-f]+\*/\s+\S", text)),
                             loops=loops(text)))
        elif f.suffix == ".ptx":
            text = f.read_text(errors="replace")
            recs.append(dict(file=f.name, ptx_loops=ptx_loops(text)))
        elif "ptxas" in f.name:
            text = f.read_text(errors="replace")
            recs.append(dict(file=f.name, ptxas=[line.strip() for line in text.splitlines()
                                                 if "registers" in line or "spill" in line or "smem" in line][:20]))
    return recs


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--plan", default="{}", help="fused-core knobs, JSON (e.g. '{\"merge_in_kernel\": true}')")
    p.add_argument("--map", type=int, default=56, help="VMamba-T stage by map side (56, 28, 14, 7)")
    p.add_argument("--batch", type=int, default=8, help="the loops do not depend on it; small compiles fast")
    args = p.parse_args()
    out = Path(args.out)
    dump = out / "dump"
    dump.mkdir(parents=True, exist_ok=True)
    os.environ.update(MOSAIC_GPU_DUMP_PTX="1", MOSAIC_GPU_DUMP_PTXAS="1", MOSAIC_GPU_DUMP_SASS="1",
                      MOSAIC_GPU_DUMP_TO=str(dump))

    import jax
    import jax.numpy as jnp

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from pallas_kernels.ss2d import pallas_mosaic_gpu as fused
    from pallas_kernels.ss2d.testing import make_core_inputs

    channels = {56: 96, 28: 192, 14: 384, 7: 768}[args.map]
    plan = json.loads(args.plan)
    args_ = make_core_inputs(0, args.batch, args.map, args.map, channels, 1, -(-channels // 16), jnp.bfloat16)
    op = lambda *a: fused.ss2d_core(*a, **plan)  # noqa: E731
    jax.block_until_ready(jax.jit(op)(*args_))
    jax.block_until_ready(jax.jit(jax.grad(lambda *a: op(*a).sum(), tuple(range(6))))(*args_))
    recs = summarise(dump)
    (out / "kernel_dump.json").write_text(json.dumps(dict(plan=plan, map=args.map, jax_version=jax.__version__,
                                                          device=jax.devices()[0].device_kind, kernels=recs), indent=1))
    print("files:", sorted(f.name for f in dump.iterdir()))
    for r in recs:
        if "loops" in r:
            print(r["file"], r["instructions"], "instructions; loops:",
                  [(lp["label"], lp["instructions"]) for lp in r["loops"]])
        elif "ptx_loops" in r:
            print(r["file"], "PTX loops:", [(lp["label"], lp["instructions"]) for lp in r["ptx_loops"]])
        else:
            print(r["file"], r["ptxas"])


if __name__ == "__main__":
    main()
