"""Resolution-scaling benchmark helpers: inference throughput, peak memory and FLOPs of one model at one resolution.

Conventions (those of the VMamba paper's `analyze/tp.py` scaling study):
  * random weights and random images; the same batch is timed after warm-up (compile excluded);
  * Swin's window grows with the input (`window_size = resolution // 32`, so the last stage is one window) and its
    `img_size` is the input size, as the paper's "Swin (scaled window)" curve;
  * ConvNeXt and VMamba need no change with resolution.
Peak memory is XLA's buffer assignment for the compiled forward (arguments + outputs + temporaries - aliased), i.e.
the device memory one call needs; unlike the allocator's process-wide peak it is per configuration.
FLOPs are fvcore-style (multiply-accumulates) from `vmamba_jax.flops`, batch 1.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vmamba_jax.analysis.flops import flops as count_flops
from vmamba_jax.models import create_model, get_entry


def scaled_model(name: str, resolution: int, dtype=jnp.bfloat16, scan_implementation: str | None = None, **kw):
    """The model as the scaling study runs it at `resolution` (Swin: img_size = resolution, window = resolution//32)."""
    cls = get_entry(name).cls.__name__
    if cls == "SwinTransformer":
        kw = dict(img_size=resolution, window_size=max(1, resolution // 32), **kw)
    elif cls in ("VSSM",) and scan_implementation is not None:
        kw = dict(scan_implementation=scan_implementation, **kw)
    return create_model(name, dtype=dtype, **kw)


def memory_bytes(compiled) -> int | None:
    """Arguments + outputs + temporaries - aliased bytes of a compiled executable (None if unavailable)."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 -- some backends do not implement it
        return None
    if m is None:
        return None
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - getattr(m, "alias_size_in_bytes", 0))


def random_variables(model, seed: int = 0, probe_size: int = 64):
    """Random N(0, 0.02^2) variables of the right shapes, without compiling `model.init` at the benchmark size.

    Parameter shapes do not depend on the input size (Swin's depend on its configured img_size/window only), so the
    shapes come from an abstract init on a small probe image; speed does not depend on the values.
    """
    key = jax.random.key(seed)
    abstract = jax.eval_shape(model.init, key, jax.ShapeDtypeStruct((1, probe_size, probe_size, 3), jnp.float32))
    leaves, treedef = jax.tree_util.tree_flatten(abstract)

    @jax.jit
    def fill(key):
        keys = jax.random.split(key, len(leaves))
        return [0.02 * jax.random.normal(k, a.shape, a.dtype) for k, a in zip(keys, leaves)]

    return jax.tree_util.tree_unflatten(treedef, fill(key))


def measure(model, resolution: int, batch: int, *, warmup: int = 3, iters: int = 10, repeats: int = 3,
            seed: int = 0, variables=None) -> dict[str, Any]:
    """Times `model.apply` on a (batch, resolution, resolution, 3) input.

    Returns {img_per_s, ms_per_batch (median over repeats of the mean over `iters` calls), peak_memory_bytes,
    compile_s}. `variables` default to `random_variables(model)`.
    """
    key = jax.random.key(seed)
    x = jax.random.normal(key, (batch, resolution, resolution, 3), jnp.float32)
    variables = random_variables(model, seed) if variables is None else variables
    t0 = time.perf_counter()
    compiled = jax.jit(lambda v, x: model.apply(v, x)).lower(variables, x).compile()
    compile_s = time.perf_counter() - t0
    for _ in range(warmup):
        compiled(variables, x).block_until_ready()
    per_call = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            out = compiled(variables, x)
        out.block_until_ready()
        per_call.append((time.perf_counter() - t0) / iters)
    ms = 1000.0 * float(np.median(per_call))
    return {"img_per_s": batch / (ms / 1000.0), "ms_per_batch": ms, "peak_memory_bytes": memory_bytes(compiled),
            "compile_s": compile_s}


def gflops(model, resolution: int) -> float:
    return count_flops(model, resolution) / 1e9


def linearity(rows: list[dict], key: str, per_image_cost) -> dict[int, float]:
    """cost per pixel at each resolution, relative to the smallest resolution (1.0 = linear in pixels)."""
    rows = sorted((r for r in rows if r.get(key) is not None), key=lambda r: r["resolution"])
    if not rows:
        return {}
    base = per_image_cost(rows[0]) / rows[0]["resolution"] ** 2
    return {r["resolution"]: per_image_cost(r) / r["resolution"] ** 2 / base for r in rows}
