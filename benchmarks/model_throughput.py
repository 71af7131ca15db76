"""Whole-model forward (inference) throughput of VMamba at 224, batch 128, bf16 compute, on one accelerator.

    python benchmarks/model_throughput.py --impl associative            # issue 2 baseline
    python benchmarks/model_throughput.py --impl auto --models vmamba_tiny_s1l8

Measures jit-compiled `model.apply` on device-resident random images (median of synchronised repeats after warm-up),
like the official `analyze/tp.py` (which times 30 forwards after 50 warm-ups). Compares with the official numbers of
`../shared/spec/targets.md` (H100, bf16 autocast). Writes benchmarks/results/forward_<impl>_<device>.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import os

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp

from benchmarks.common import device_name, environment, median, scan_impl_name, time_fn, write_results
import vmamba_jax

# Official PyTorch VMamba on an H100, bf16 autocast inference, batch 128, 224 (spec/targets.md).
OFFICIAL_BF16_IMG_S = {"vmamba_tiny_s1l8": 2846, "vmamba_small_s1l20": 1945, "vmamba_base_s1l20": 1552,
                       "vmamba_small_s2l15": 1503, "vmamba_base_s2l15": 1196}


def forward_fn(name: str, impl: str, batch: int, resolution: int, dtype):
    """(call, model): `call()` runs the jitted `model.apply` of `name` on device-resident random images
    (batch, resolution, resolution, 3); its first call compiles."""
    model = vmamba_jax.create_model(name, dtype=dtype, scan_implementation=impl)
    x = jax.random.normal(jax.random.key(0), (batch, resolution, resolution, 3), jnp.float32)
    variables = jax.jit(model.init)(jax.random.key(1), x[:1])
    forward = jax.jit(lambda v, x: model.apply(v, x))
    return (lambda: forward(variables, x)), model


def bench(name: str, impl: str, batch: int, resolution: int, dtype, repeats: int, prepared=None) -> dict:
    """Inference throughput of `name`; `prepared`: its `forward_fn(...)`, already compiled by the caller."""
    call, model = prepared or forward_fn(name, impl, batch, resolution, dtype)
    times = time_fn(call, warmup=3, repeats=repeats)
    t = median(times)
    return dict(model=name, batch=batch, resolution=resolution, dtype=jnp.dtype(dtype).name,
                impl=scan_impl_name(impl, model),
                ms_per_batch=t * 1e3, img_per_s=batch / t,
                official_img_per_s=OFFICIAL_BF16_IMG_S.get(name),
                vs_official=(batch / t) / OFFICIAL_BF16_IMG_S[name] if name in OFFICIAL_BF16_IMG_S else None,
                **environment())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", default=["vmamba_tiny_s1l8", "vmamba_small_s2l15", "vmamba_base_s2l15",
                                                  "vmamba_small_s1l20", "vmamba_base_s1l20"])
    p.add_argument("--impl", default="associative", help="ss2d_core implementation (auto, associative, xla, ...)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    records = []
    for name in args.models:
        r = bench(name, args.impl, args.batch, args.resolution, jnp.dtype(args.dtype), args.repeats)
        print(f"{name:22s} {r['impl']:18s} {r['img_per_s']:8.0f} img/s  ({r['ms_per_batch']:.1f} ms/batch; "
              f"official {r['official_img_per_s']})", flush=True)
        records.append(r)
        # Written after every model, so a run cut short by a time limit keeps what it measured.
        write_results(f"forward_{records[0]['impl']}_{device_name()}", records,
                      ["model", "impl", "batch", "dtype", "img_per_s", "official_img_per_s", "vs_official"],
                      f"VMamba forward throughput ({args.resolution}px, batch {args.batch}, {args.dtype})")


if __name__ == "__main__":
    main()
