"""The fused SS2D core on Hopper GPUs: one Mosaic GPU scan kernel for the four scan orders (forward + custom_vjp).

Contract: `reference.ss2d_core_reference`. What differs from that composition is what never reaches HBM:

* no cross-scan copies: the four orders read one of two *sources*, the row-major view of x (a free reshape of the
  NHWC activation) and its column-major view (one transposed copy); the reversed orders walk their source backwards
  by index (`pallas_kernels.selective_scan.pallas_mosaic_gpu`, `_Plan.reverse`);
* no (K, L, D) delta: x_proj runs in XLA over each source (B, L, R+2N per order: small), and the kernel forms
  delta = dt_proj(dts) from the R per-step dts and dt_proj's R weight vectors, adding the bias and softplus. That
  costs R broadcast loads and FMAs per step and channel on a latency-bound walk, and R = D/16 grows with the stage
  (6 at VMamba-T's 56x56, 48 at 7x7), so `delta_in_kernel=False` (or a rank above DELTA_IN_KERNEL_MAX_RANK) has XLA
  form delta per order instead, in its source's layout (one bf16 (B, K, L, D) array, a tensor-core matmul), and the
  kernel reads it like the plain scan does;
* no channel-major transposes: the kernel is channel-minor like the activation itself.

The kernel writes each order's output by position, in its source's layout; XLA sums the two row-major and the two
column-major outputs and transposes the latter back (one fused pass). The op returns the per-source sums
(`mgpu._sum_orders`), so the backward's dy is two copies of the merged dy, one per source, not four. With
`merge_in_kernel` the kernel itself adds every order's output (and, in the backward, its du) into one row-major f32
array by atomic adds (`_Plan.merge_hw`); with `pixel_outputs` it stores each order's output (and du) at its
row-major pixels and XLA sums the orders without transposes (`_Plan.merge_by_xla`). The backward is the same kernel
family (boundary states saved by the training forward, recompute per tile); it sums dt_proj's weight gradient over
its walk and returns d(delta) per position, which XLA contracts with dt_proj's weight for d(dts).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from pallas_kernels.selective_scan import pallas_mosaic_gpu as mgpu
from pallas_kernels.ss2d.reference import ALL_DIRECTIONS

f32 = jnp.float32
is_supported = mgpu.is_supported
# The d_states `implementation="auto"` may pick this core for: those its GPU test has passed
# (benchmarks/results/gpu_kernel_tests_h200.md). Any d_state works when it is asked for by name. The one d_state 16
# bf16 draw that missed the plain 1e-2 bf16 rule (14x14x384 dx 1.35e-2, gpu_kernel_tests_h200_direct_store.md) passes
# the rule against the fp32 result, as does every other d_state 16 case (gpu_kernel_tests_h200_delta_rank12.md).
VERIFIED_D_STATES = (1, 16)
# `delta_in_kernel`'s default: the low-rank delta in the kernel up to this dt rank, from XLA above it. 12 keeps it in
# the kernel at VMamba-T's 56x56 and 28x28 stages (ranks 6, 12) and has XLA form it at 14x14 and 7x7 (24, 48), where
# the in-kernel delta's R loads and FMAs a step made the backward lose: fused fwd+bwd 2.32 -> 1.67 ms at 14x14 and
# 1.64 -> 0.97 ms at 7x7, but 4.12 -> 5.51 ms at 56x56 (benchmarks/results/scan_delta_h200.md); VMamba-T's train
# step 2074 -> 2240 img/s (train_throughput_h200.md). VMAMBA_MGPU_DELTA_IN_KERNEL_MAX_RANK overrides it.
DELTA_IN_KERNEL_MAX_RANK = int(os.environ.get("VMAMBA_MGPU_DELTA_IN_KERNEL_MAX_RANK", "12"))
# `merge_in_kernel`'s default where the plan allows it (direct_store, unsplit): off. Its GPU tests passed
# (benchmarks/results/gpu_kernel_tests_h200_merge_in_kernel.md) but the atomic adds were slower than XLA's merge at
# every stage (scan_merge_in_kernel_h200.md: 56x56 forward 0.80 -> 1.17 ms, forward+backward 3.69 -> 4.24 ms,
# back-to-back). VMAMBA_MGPU_MERGE_IN_KERNEL=1 turns it on.
MERGE_IN_KERNEL = os.environ.get("VMAMBA_MGPU_MERGE_IN_KERNEL", "0") == "1"
# `pixel_outputs`' default where the plan allows it (direct_store, unsplit) and the kernel does not merge: off. The
# kernel stores each order's y and du at its row-major pixels and reads dy per source, so XLA's merge is a plain sum
# over the orders (no transposes of the column-major orders' outputs) and the backward makes 2 copies of dy instead
# of 4 (`_Plan.merge_by_xla`). Right on the H200 (GPU kernel tests 12/12 at d_state 1) but slower at stage 1: forward
# 0.78 -> 0.90 ms, forward+backward 3.32 -> 3.49 ms back-to-back, XLA's building of the two sources from the padded
# image costing more than the transposes it saves (benchmarks/results/scan_pixel_outputs_h200.md).
# VMAMBA_MGPU_PIXEL_OUTPUTS=1 turns it on.
PIXEL_OUTPUTS = os.environ.get("VMAMBA_MGPU_PIXEL_OUTPUTS", "0") == "1"
# `y_in_compute_dtype`'s default: on at these d_states, where the GPU kernel tests passed with it (12/12 each at
# d_state 1 and 16, benchmarks/results/gpu_kernel_tests_h200_dy_bf16.md). Each order's y is stored by the kernel in
# x's dtype (bf16 at bf16 compute; f32 compute is unchanged) and summed over the orders in f32, and the backward reads
# its cotangent dy in that dtype too (`_Plan.y_in_u_dtype`). H200, stage 1, back-to-back: d_state 1 forward 0.80 ->
# 0.65 ms, forward+backward 2.53 -> 2.43 ms (scan_y_bf16_h200.md, scan_dy_bf16_h200.md); d_state 16 forward 2.31 ->
# 2.04 ms, forward+backward unchanged (18.45 -> 18.41). y 1.4-2.5e-3 off the bf16 reference instead of <= 8e-4.
# VMAMBA_MGPU_Y_IN_COMPUTE_DTYPE_D_STATES overrides the list ("" turns it off).
Y_IN_COMPUTE_DTYPE_D_STATES = tuple(
    int(v) for v in os.environ.get("VMAMBA_MGPU_Y_IN_COMPUTE_DTYPE_D_STATES", "1,16").split(",") if v.strip())


def resolve_delta_in_kernel(delta_in_kernel: bool | None, rank: int) -> bool:
    """None -> the module default for this dt rank (DELTA_IN_KERNEL_MAX_RANK)."""
    return bool(delta_in_kernel) if delta_in_kernel is not None else rank <= DELTA_IN_KERNEL_MAX_RANK


def resolve_merge_in_kernel(merge_in_kernel: bool | None, direct_store: bool, splits: int) -> bool:
    """None -> the module default (MERGE_IN_KERNEL) where the plan allows it (direct_store, one split)."""
    if merge_in_kernel is not None:
        return bool(merge_in_kernel)
    return MERGE_IN_KERNEL and direct_store and splits == 1


def resolve_pixel_outputs(pixel_outputs: bool | None, direct_store: bool, splits: int, merge: bool) -> bool:
    """None -> the module default (PIXEL_OUTPUTS) where the plan allows it (direct_store, one split, no atomic
    merge); asked for by name where it cannot run, an error."""
    allowed = direct_store and splits == 1 and not merge
    if pixel_outputs is None:
        return PIXEL_OUTPUTS and allowed
    if pixel_outputs and not allowed:
        raise ValueError("pixel_outputs stores each order's outputs straight from registers at its pixels: it needs "
                         "direct_store=True, splits=1 and merge_in_kernel off")
    return bool(pixel_outputs)


def resolve_y_in_compute_dtype(y_in_compute_dtype: bool | None, d_state: int, merge: bool) -> bool:
    """None -> the module default (on at Y_IN_COMPUTE_DTYPE_D_STATES); never with the atomic merge (it adds y in
    f32)."""
    on = d_state in Y_IN_COMPUTE_DTYPE_D_STATES if y_in_compute_dtype is None else bool(y_in_compute_dtype)
    return on and not merge


def ss2d_core(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, *,
              directions: tuple[int, ...] = ALL_DIRECTIONS, seq_tile: int | None = None,
              bwd_seq_tile: int | None = None, unroll: int | None = None, bwd_unroll: int | None = None,
              direct_store: bool | None = None, approx_math: bool | None = None,
              delta_in_kernel: bool | None = None, splits: int | None = None, dbc_by_xla: bool | None = None,
              merge_in_kernel: bool | None = None, pixel_outputs: bool | None = None,
              cache_steps: bool | None = None, static_orders: bool | None = None,
              y_in_compute_dtype: bool | None = None, register_states: bool | None = None, interpret=None):
    """x (B, H, W, D) compute dtype -> y (B, H, W, D) fp32, the merged scan output before out_norm; differentiable.

    Parameters as in `reference.ss2d_core_reference` (fp32; K = len(directions) parameter sets). The keywords after
    `directions` are the kernel's tuning knobs (`pallas_mosaic_gpu._Plan`; None: the module defaults), swept by
    benchmarks/scan_bench.py, and Pallas' Mosaic GPU interpreter parameters for tests on CPU.
    """
    b, h, w, d = x.shape
    k_n, n, r = len(directions), A_logs.shape[-1], dt_projs_weight.shape[-1]
    L = h * w
    layouts = sorted({k % 2 for k in directions})                       # 0: row-major, 1: column-major
    plan_src = tuple(layouts.index(k % 2) for k in directions)
    in_kernel = resolve_delta_in_kernel(delta_in_kernel, r)
    kr = r if in_kernel else 0                                          # the kernel's rank (0: delta is an input)
    short = (mgpu.min_seq_tile(kr, n, jnp.dtype(mgpu.PROJ_DTYPE).itemsize)  # short-L tiles, on the fast plan only
             if n in mgpu.FAST_PLAN_D_STATES else None)
    splits = mgpu.resolve_splits(splits)
    register_states = mgpu.resolve_register_states(register_states, n, fused=True, length=L)
    tl_f, tl_b, lp = mgpu.plan_tiles(L, n, seq_tile, bwd_seq_tile, min_tile=short, splits=splits,
                                     max_bwd_tile=mgpu.resolve_fused_max_bwd_tile(register_states, n))
    dp = mgpu.LANES * -(-d // mgpu.LANES)
    direct_store = mgpu.resolve_direct_store(direct_store, interpret, n)
    merge = resolve_merge_in_kernel(merge_in_kernel, direct_store, splits)
    pixel = resolve_pixel_outputs(pixel_outputs, direct_store, splits, merge)
    unroll = mgpu.resolve_unroll(unroll, n)
    plan = mgpu._Plan(groups=k_n, source=plan_src, reverse=tuple(k >= 2 for k in directions), rank=kr, d_state=n,
                      tl_fwd=tl_f, tl_bwd=tl_b, softplus=True, unroll=unroll,
                      bwd_unroll=mgpu.resolve_bwd_unroll(bwd_unroll, unroll, n),
                      direct_store=direct_store, approx_math=mgpu.resolve_approx_math(approx_math, n), splits=splits,
                      dbc_by_xla=mgpu.resolve_dbc_by_xla(dbc_by_xla, direct_store),
                      cache_steps=mgpu.resolve_cache_steps(cache_steps),
                      static_orders=mgpu.resolve_static_orders(static_orders),
                      register_states=register_states,
                      merge_hw=(h, w) if merge or pixel else None, merge_by_xla=pixel,
                      source_col_major=tuple(s == 1 for s in layouts),
                      y_in_u_dtype=resolve_y_in_compute_dtype(y_in_compute_dtype, n, merge),
                      interpret=interpret)

    # dx sums the partials of x_proj and of each source's du. Each use takes its own x-dtype copy of an f32 x,
    # so the backward adds them in f32 and rounds once: added in bf16, XLA's fusion boundaries decided the roundings
    # and 14x14x384 dx went from 5.1e-3 to 1.01e-2 off the fp32 result on an unrelated change of op order
    # (benchmarks/results/gpu_kernel_tests_h200_case8.json). The forward is unchanged (the round trip is exact).
    xf = x.astype(f32)

    def view(s):  # (B, L, D) in x's dtype: 0 row-major, 1 column-major; a fresh copy per use
        v = xf.reshape(b, L, d) if s == 0 else jnp.swapaxes(xf, 1, 2).reshape(b, L, d)
        return v.astype(x.dtype)

    # x_proj of every order in one contraction over the image (a pixel's projection does not depend on the order),
    # the column-major orders' (small: R+2N rows) results then transposed to their walk: (B, K, R+2N, L). So the
    # backward's dx has one x_proj partial, not one per order or source.
    precision = jax.lax.Precision.HIGHEST if x.dtype == f32 else None
    pix = jnp.einsum("bhwd,kcd->bkchw", view(0).reshape(b, h, w, d), x_proj_weight.astype(x.dtype),
                     precision=precision)
    proj = jnp.stack([(pix[:, j] if k % 2 == 0 else jnp.swapaxes(pix[:, j], 2, 3)).reshape(b, -1, L)
                      for j, k in enumerate(directions)], axis=1)

    if merge or pixel:  # the row-major image: the kernel's wrapper builds the sources (`_sources`), merges into it
        u = jnp.pad(view(0), ((0, 0), (0, lp - L), (0, dp - d)))
    else:
        src = jnp.stack([view(s) for s in layouts], axis=1)            # (B, S, L, D)
        u = jnp.pad(src, ((0, 0), (0, 0), (0, lp - L), (0, dp - d))).reshape(b * len(layouts), lp, dp)
    A = -jnp.exp(A_logs.astype(f32)).reshape(k_n, d, n)
    rows = [Ds.astype(f32).reshape(k_n, 1, d), dt_projs_bias.astype(f32).reshape(k_n, 1, d), jnp.swapaxes(A, 1, 2)]
    dl = None
    if in_kernel:
        rows.append(jnp.swapaxes(dt_projs_weight.astype(f32), 1, 2))   # dt_proj's R weight vectors
    else:  # delta per order in its source's layout, before bias and softplus (as the reference's dts)
        dl = jnp.einsum("bkrl,kdr->bkld", proj[:, :, :r], dt_projs_weight.astype(x.dtype), precision=precision)
        dl = jnp.pad(dl, ((0, 0), (0, 0), (0, lp - L), (0, dp - d))).reshape(b * k_n, lp, dp)
        proj = proj[:, :, r:]                                           # B and C rows only
    proj = jnp.pad(proj.astype(mgpu.PROJ_DTYPE), ((0, 0), (0, 0), (0, 0), (0, lp - L)))
    proj = proj.reshape(b * k_n, kr + 2 * n, lp)
    prm = jnp.pad(jnp.concatenate(rows, axis=1), ((0, 0), (0, 0), (0, dp - d)))  # (K, 2+N(+R), Dp)

    mgpu.check_tma_tiles(plan, proj.dtype.itemsize)
    if merge or pixel:
        return mgpu.scan(plan, u, dl, proj, prm)[:, :L, :d].reshape(b, h, w, d)
    y = mgpu.scan(plan, u, dl, proj, prm).reshape(b, len(layouts), lp, dp)[:, :, :L, :d]  # per source
    out = jnp.zeros((b, h, w, d), f32)
    for i, s in enumerate(layouts):
        out = out + (y[:, i].reshape(b, h, w, d) if s == 0 else jnp.swapaxes(y[:, i].reshape(b, w, h, d), 1, 2))
    return out
