"""The SS2D core as the official code composes it: cross-scan, projections, selective scan, cross-merge.

This is the XLA reference (the contract) for the fused SS2D kernels. Layout is channel-last: the block activation
x (B, H, W, D) after the depthwise conv and SiLU, and the merged output y (B, H, W, D) in fp32, before out_norm.

The four scan orders (official `cross_scan_fn`, `scans=0`), for a pixel (h, w) of an H x W map with L = H*W:
    k=0  row-major               l = h*W + w
    k=1  column-major            l = w*H + h
    k=2  reversed row-major      l = L-1 - (h*W + w)
    k=3  reversed column-major   l = L-1 - (w*H + h)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.selective_scan import selective_scan

K = 4  # scan directions


def cross_scan(x: jax.Array) -> jax.Array:
    """(B, H, W, D) -> (B, K, L, D): the four scan orders of the map, stacked."""
    b, h, w, d = x.shape
    row = x.reshape(b, h * w, d)
    col = jnp.swapaxes(x, 1, 2).reshape(b, h * w, d)
    return jnp.stack([row, col, row[:, ::-1], col[:, ::-1]], axis=1)


def cross_merge(ys: jax.Array, h: int, w: int) -> jax.Array:
    """(B, K, L, D) -> (B, H, W, D): undo each order and sum the four (official `cross_merge_fn`)."""
    b, _, _, d = ys.shape
    row = ys[:, 0] + ys[:, 2, ::-1]
    col = ys[:, 1] + ys[:, 3, ::-1]
    return row.reshape(b, h, w, d) + jnp.swapaxes(col.reshape(b, w, h, d), 1, 2)


def ssm_inputs(xs, x_proj_weight, dt_projs_weight):
    """Per-direction projections of the scanned sequences (official x_proj / dt_proj, grouped by direction).

    Args:
      xs: (B, K, L, D) scanned activations.
      x_proj_weight: (K, R + 2N, D); rows ordered [dt (R) | B (N) | C (N)].
      dt_projs_weight: (K, D, R).
    Returns:
      dts (B, K, L, D), Bs (B, K, N, L), Cs (B, K, N, L), all in xs.dtype.
    """
    r = dt_projs_weight.shape[-1]
    n = (x_proj_weight.shape[1] - r) // 2
    # fp32 means true fp32 (GPUs would otherwise use TF32 for these contractions); bf16 keeps the default.
    precision = jax.lax.Precision.HIGHEST if xs.dtype == jnp.float32 else None
    x_dbl = jnp.einsum("bkld,kcd->bklc", xs, x_proj_weight.astype(xs.dtype), precision=precision)
    dts_r, bs, cs = jnp.split(x_dbl, [r, r + n], axis=-1)
    dts = jnp.einsum("bklr,kdr->bkld", dts_r, dt_projs_weight.astype(xs.dtype), precision=precision)
    return dts, jnp.swapaxes(bs, 2, 3), jnp.swapaxes(cs, 2, 3)


def ss2d_core_reference(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, *, scan_implementation=None):
    """SS2D core: y = cross_merge(selective_scan(cross_scan(x), ...)).

    Args:
      x: (B, H, W, D) activation after conv + SiLU, compute dtype (bf16 or fp32).
      x_proj_weight (K, R+2N, D), dt_projs_weight (K, D, R), dt_projs_bias (K, D), A_logs (K*D, N), Ds (K*D,):
        the official SS2D parameters, fp32.
      scan_implementation: passed to `pallas_kernels.selective_scan`.
    Returns:
      y: (B, H, W, D) float32, the merged scan output before out_norm.
    """
    b, h, w, d = x.shape
    L = h * w
    xs = cross_scan(x)                                            # (B, K, L, D)
    dts, bs, cs = ssm_inputs(xs, x_proj_weight, dt_projs_weight)

    def channels_first(t):  # (B, K, L, D) -> (B, K*D, L), the official op's layout
        return jnp.swapaxes(t, 2, 3).reshape(b, K * d, L)

    ys = selective_scan(
        channels_first(xs), channels_first(dts), -jnp.exp(A_logs.astype(jnp.float32)), bs, cs,
        Ds.astype(jnp.float32), dt_projs_bias.reshape(-1).astype(jnp.float32), True,
        implementation=scan_implementation)
    ys = jnp.swapaxes(ys.reshape(b, K, d, L), 2, 3)               # (B, K, L, D) fp32
    return cross_merge(ys, h, w)
