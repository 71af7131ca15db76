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


ALL_DIRECTIONS = (0, 1, 2, 3)


def cross_scan(x: jax.Array, directions: tuple[int, ...] = ALL_DIRECTIONS) -> jax.Array:
    """(B, H, W, D) -> (B, len(directions), L, D): the scan orders of the map (all four by default), stacked."""
    b, h, w, d = x.shape
    row = x.reshape(b, h * w, d)
    col = jnp.swapaxes(x, 1, 2).reshape(b, h * w, d)
    orders = {0: row, 1: col, 2: row[:, ::-1], 3: col[:, ::-1]}
    return jnp.stack([orders[k] for k in directions], axis=1)


def cross_merge(ys: jax.Array, h: int, w: int, directions: tuple[int, ...] = ALL_DIRECTIONS) -> jax.Array:
    """(B, len(directions), L, D) -> (B, H, W, D): undo each order and sum (official `cross_merge_fn`)."""
    b, _, _, d = ys.shape
    row = col = 0.0
    for j, k in enumerate(directions):
        y = ys[:, j, ::-1] if k >= 2 else ys[:, j]
        if k % 2:
            col = col + y
        else:
            row = row + y
    out = jnp.zeros((b, h, w, d), ys.dtype)
    if any(k % 2 == 0 for k in directions):
        out = out + row.reshape(b, h, w, d)
    if any(k % 2 for k in directions):
        out = out + jnp.swapaxes(col.reshape(b, w, h, d), 1, 2)
    return out


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


def ss2d_core_reference(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, *, scan_implementation=None,
                        directions: tuple[int, ...] = ALL_DIRECTIONS):
    """SS2D core: y = cross_merge(selective_scan(cross_scan(x), ...)).

    Args:
      x: (B, H, W, D) activation after conv + SiLU, compute dtype (bf16 or fp32).
      x_proj_weight (K, R+2N, D), dt_projs_weight (K, D, R), dt_projs_bias (K, D), A_logs (K*D, N), Ds (K*D,):
        the official SS2D parameters, fp32; K = len(directions).
      scan_implementation: passed to `pallas_kernels.selective_scan`.
      directions: the scan orders these parameters belong to (default all four). A subset gives that part of the
        merged sum: direction parallelism sums the parts over devices (`api.ss2d_core_direction_parallel`).
    Returns:
      y: (B, H, W, D) float32, the merged scan output before out_norm.
    """
    b, h, w, d = x.shape
    L, k = h * w, len(directions)
    xs = cross_scan(x, directions)                                # (B, k, L, D)
    dts, bs, cs = ssm_inputs(xs, x_proj_weight, dt_projs_weight)

    def channels_first(t):  # (B, k, L, D) -> (B, k*D, L), the official op's layout
        return jnp.swapaxes(t, 2, 3).reshape(b, k * d, L)

    ys = selective_scan(
        channels_first(xs), channels_first(dts), -jnp.exp(A_logs.astype(jnp.float32)), bs, cs,
        Ds.astype(jnp.float32), dt_projs_bias.reshape(-1).astype(jnp.float32), True,
        implementation=scan_implementation)
    ys = jnp.swapaxes(ys.reshape(b, k, d, L), 2, 3)               # (B, k, L, D) fp32
    return cross_merge(ys, h, w, directions)
