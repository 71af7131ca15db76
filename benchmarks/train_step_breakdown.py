"""Where the VMamba-T training step's time goes (run on a GPU): forward and forward+backward of the model with the
real SS2D core, with the core replaced by a trivial op (the non-scan cost), with the depthwise convs computed as
nine shifted multiply-adds instead of XLA's grouped convolution (shift_conv), and with the depthwise kernel gradient
left to JAX's autodiff, a `batch_group_count` convolution (xla_dwconv_grad), instead of `depthwise_conv2d`'s.

    python benchmarks/train_step_breakdown.py --impl fused_mosaic_gpu --out /tmp/out/breakdown.json

Batch 128 at 224, bf16 compute, fp32 params; loss = mean soft-target cross-entropy; grad wrt all params. Medians of
synchronised repeats after warm-up. A diagnostic: it writes one JSON list and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vmamba_jax  # noqa: E402
from benchmarks.common import median, time_fn  # noqa: E402
from vmamba_jax.models import layers  # noqa: E402
from vmamba_jax.models import ss2d as ss2d_module  # noqa: E402


class ShiftDepthwiseConv(nn.Module):
    """Depthwise k x k conv (stride 1, symmetric padding) as k*k shifted multiply-adds; same params as nn.Conv."""

    features: int
    kernel: int
    padding: int
    use_bias: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        k = self.param("kernel", nn.initializers.lecun_normal(), (self.kernel, self.kernel, 1, self.features))
        _, h, w, _ = x.shape
        xp = jnp.pad(x.astype(self.dtype), ((0, 0), (self.padding,) * 2, (self.padding,) * 2, (0, 0)))
        kk = k.astype(self.dtype)
        y = sum(xp[:, i:i + h, j:j + w, :] * kk[i, j, 0] for i in range(self.kernel) for j in range(self.kernel))
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(self.dtype)
        return y


def shift_conv(features, kernel, stride=1, padding=0, groups=1, use_bias=True, in_features=None, dtype=jnp.float32,
               name=None):
    assert groups == features and stride == 1
    return ShiftDepthwiseConv(features, kernel, padding, use_bias, dtype, name=name)


def trivial_core(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, **_):
    d = x.shape[-1]
    return x.astype(jnp.float32) * Ds[:d] + dt_projs_bias[0]


def measure(impl, variant, batch, res):
    patches = []
    if variant in ("trivial_core", "trivial_core+shift_conv"):
        patches.append(mock.patch.object(ss2d_module, "ss2d_core", trivial_core))
    if variant in ("shift_conv", "trivial_core+shift_conv"):
        patches.append(mock.patch.object(ss2d_module, "Conv", shift_conv))
    if variant == "xla_dwconv_grad":
        patches.append(mock.patch.object(layers, "depthwise_conv2d", layers._depthwise))
    for p in patches:
        p.start()
    try:
        model = vmamba_jax.create_model("vmamba_tiny_s1l8", dtype=jnp.bfloat16, scan_implementation=impl)
        x = jax.random.normal(jax.random.PRNGKey(0), (batch, res, res, 3))
        labels = jax.nn.one_hot(jax.random.randint(jax.random.PRNGKey(2), (batch,), 0, 1000), 1000)
        params = jax.jit(model.init)(jax.random.PRNGKey(1), x[:1])["params"]

        def loss(p, x):
            logits = model.apply({"params": p}, x, train=False)
            return -jnp.mean(jnp.sum(labels * jax.nn.log_softmax(logits.astype(jnp.float32)), -1))

        fwd = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))
        grad = jax.jit(jax.value_and_grad(loss))
        t0 = time.perf_counter()
        jax.block_until_ready(grad(params, x))
        compile_s = time.perf_counter() - t0
        print(f"{variant}: value_and_grad compiled and ran once in {compile_s:.1f} s", flush=True)
        ms = lambda f: round(median(time_fn(lambda: f(params, x), warmup=2, repeats=10)) * 1e3, 2)  # noqa: E731
        return dict(fwd_ms=ms(fwd), fwd_bwd_ms=ms(grad),
                    grad_compile_s=round(compile_s, 1))
    finally:
        for p in patches:
            p.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--impl", default=None)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--res", type=int, default=224)
    ap.add_argument("--variants", default="model,trivial_core,shift_conv,xla_dwconv_grad")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    env = dict(device=jax.devices()[0].device_kind, jax_version=jax.__version__, impl=a.impl, batch=a.batch,
               res=a.res, command="python " + " ".join(sys.argv))
    rows = []
    for v in a.variants.split(","):
        row = dict(variant=v, **env)
        try:
            row.update(measure(a.impl, v, a.batch, a.res))
        except Exception as e:  # noqa: BLE001 - a diagnostic: keep the other variants
            row["error"] = f"{type(e).__name__}: {str(e)[:400]}"
        rows.append(row)
        print(json.dumps(row), flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1))
    print("\n| variant | fwd ms | fwd+bwd ms | img/s fwd+bwd |\n|---|---|---|---|")
    for r in rows:
        ms = r.get("fwd_bwd_ms")
        print(f"| {r['variant']} | {r.get('fwd_ms', r.get('error', '')[:50])} | {ms} | "
              f"{a.batch / ms * 1e3 if ms else '':.0f} |" if ms else f"| {r['variant']} | {r.get('error')} | | |")


if __name__ == "__main__":
    main()
