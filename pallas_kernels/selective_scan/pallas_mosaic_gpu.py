"""The selective scan as a Mosaic GPU Pallas kernel (Hopper+): `plgpu.kernel` + `plgpu.emit_pipeline`, custom_vjp.

Layout (the one that lowered first time on an H100, jax_notes.md §2.6): channels are the minor axis and each of the
128 threads of a warpgroup owns one channel, so every in-kernel value is a (128,) fp32 vector and the d_state axis is
statically unrolled into N such vectors. One CUDA block = one (batch, group) sequence x one 128-channel tile; it walks
the whole sequence, `emit_pipeline` streaming (TL, 128) tiles GMEM -> SMEM by TMA (double buffered) with the state as
the pipeline carry. B and C (and the low-rank dts, below) are read as per-step scalars from SMEM.

One kernel pair serves two callers, described by a static `_Plan`:

* the plain op `selective_scan` (the official layout (batch, K*D, L)): the wrapper transposes to channel-minor
  (batch*K, L, D) sequences, one per (batch, group);
* the fused SS2D core (`pallas_kernels.ss2d.pallas_mosaic_gpu`): the K = 4 scan orders read their sequence from one of
  two *sources* (the row-major and the column-major view of the image), the reversed orders walk their source
  backwards by index (reversed tile index maps and in-tile indices: no reversed copies), and delta is formed in the
  kernel from the low-rank dts (R per-step scalars) and dt_proj's weight (R per-channel vectors), so the (K, L, D)
  delta tensor never exists in the forward.

Common to both:
* delta_bias, softplus with the official threshold (x > 20 passes through) and the D skip are fused in the kernel.
  Channels are padded to a multiple of 128 and L to a multiple of the sequence tile with zeros. Padded steps are
  neutral: at the end of a forward walk they come after every real step; at the start of a reversed walk the state is
  still zero and u = 0 keeps it zero; and dy = 0 there.
* Forward for training also writes the state entering every sequence tile (G, tiles, N, D), in walk order, when they
  are small (`saves_states`); else the backward recomputes them first.
* Backward walks the tiles in reverse walk order, recomputes the tile's states from its boundary state into SMEM, and
  steps back in time carrying dh. dA, dD and d(delta_bias) are per-channel sums carried in registers and written once
  per block (then summed over batch in XLA). dB and dC are sums over the block's 128 channels: each step stores its N
  per-channel products as SMEM rows and once per tile the rows are loaded in the WGMMA register layout and row-summed
  (`.sum(axis=1)`, the flash-attention row-sum path), giving per-channel-tile partials that XLA sums over tiles. With
  low-rank delta the kernel returns d(delta) per position and XLA contracts it with the dts and dt_proj's weight.

Testing: Pallas' Mosaic GPU interpreter (not yet exported by JAX: `testing.mosaic_gpu_interpreter()`) runs these
kernels on the CPU on their `direct_store` path, so CI checks the kernel bodies themselves against the reference
(tests/test_mosaic_gpu_interpret.py); CI also checks that every variant lowers for CUDA (`jax.export`). The compiled
kernels are checked on a Hopper GPU by `benchmarks/gpu_kernel_tests.py` (output committed under benchmarks/results/).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.selective_scan.reference import SOFTPLUS_THRESHOLD, check_inputs

f32 = jnp.float32
LANES = 128            # one channel per thread of a warpgroup
ROWS = 64              # WGMMA layout row granularity for the dB/dC row sums
# Per-tile SMEM budget: the sequence tile trades pipeline overhead against SMEM (and so blocks per SM).
FWD_SEQ_TILE = {1: 64, 16: 32}
BWD_SEQ_TILE = {1: 32, 16: 4}
# The plain scan's own backward tile on the fast plan's d_states: 16, not 32. Its backward also streams delta and reads
# dy in f32, so at tile 32 a block takes ~115 KB of SMEM and one fits an SM (two need 230 of the H200's 227 KB); at
# 16 it takes ~75 KB and three fit. H200, stage 1 bf16, back-to-back forward+backward 3.84 -> 3.32 ms (the fused
# core, which reads no delta, is slower at 16: 2.44 -> 2.72 ms; benchmarks/results/scan_dy_bf16_h200.md).
PLAIN_BWD_SEQ_TILE = 16
# With the recomputed states in registers (`register_states`) the states tile leaves SMEM and a tile-32 block fits
# two to an SM again: H200, stage 1 bf16, back-to-back forward+backward 2.87 (tile 16) -> 2.68 ms (tile 32;
# benchmarks/results/scan_register_states_h200.md).
PLAIN_BWD_SEQ_TILE_REGISTER_STATES = 32
# The fused core's backward tile with `register_states`: at most 16. Its tile is unrolled whole, and at 32 steps (R dW
# sums, two sources a step) the states of the tile pushed it past the register file: H200, stage 1 bf16, back-to-back
# forward+backward 2.42 (states in SMEM, tile 32) -> 5.32 (registers, tile 32) -> 2.21 ms (registers, tile 16;
# benchmarks/results/scan_register_states_h200.md).
FUSED_MAX_BWD_SEQ_TILE_REGISTER_STATES = 16
FUSED_REGISTER_STATES_MIN_LENGTH = 3136  # VMamba's stage 1 at 224 (56 x 56); see REGISTER_STATES
# The time loop's unroll factor: the state update is the only loop-carried dependency, so unrolled steps overlap their
# loads, softplus and exp (one warpgroup per block leaves the SM little else to hide latency with). 2 on the fast plan's
# d_states since 2026-12-02 (benchmarks/results/scan_sweep_h200_exp2.md: fused core at stage 1 forward+backward 3.58 ->
# 3.33 ms back-to-back, forward 0.77 -> 0.78; plain scan 3.95 -> 3.94; GPU kernel tests with it:
# gpu_kernel_tests_h200_unroll2.md), 1 elsewhere (untested on the GPU). VMAMBA_MGPU_UNROLL sets it for every d_state.
UNROLL = int(os.environ["VMAMBA_MGPU_UNROLL"]) if "VMAMBA_MGPU_UNROLL" in os.environ else None


def resolve_unroll(unroll: int | None, d_state: int) -> int:
    """None -> the module default for this d_state (UNROLL, else 2 on FAST_PLAN_D_STATES and 1 elsewhere)."""
    if unroll is not None:
        return int(unroll)
    if UNROLL is not None:
        return UNROLL
    return 2 if d_state in FAST_PLAN_D_STATES else 1


# The backward kernel's own unroll factor (its recompute and adjoint loops). The backward runs 2 blocks an SM at
# stage 1 (109.5 KB of SMEM each), so it has fewer warps to hide a step's latency with than the forward (4-5 blocks),
# and a step has more independent work: unrolled 4 it is faster where the forward is not (the unroll sweep of
# 2026-12-01 found unroll 4 for both 4-6% faster forward+backward but the fused forward 20% slower). 4 on the fast
# plan's d_states since 2026-12-03 (benchmarks/results/scan_bwd_unroll_h200.md, H200 stage 1 back-to-back: plain scan
# forward+backward 3.96 -> 3.83 ms, fused core 3.35 -> 3.30 ms; GPU kernel tests 12/12 for both at d_state 1), else
# the forward's `unroll`. VMAMBA_MGPU_BWD_UNROLL sets it for every d_state.
BWD_UNROLL = int(os.environ["VMAMBA_MGPU_BWD_UNROLL"]) if "VMAMBA_MGPU_BWD_UNROLL" in os.environ else None


def resolve_bwd_unroll(bwd_unroll: int | None, unroll: int, d_state: int) -> int:
    """None -> BWD_UNROLL, else 4 on FAST_PLAN_D_STATES and the forward's resolved `unroll` elsewhere."""
    if bwd_unroll is not None:
        return int(bwd_unroll)
    if BWD_UNROLL is not None:
        return BWD_UNROLL
    return 4 if d_state in FAST_PLAN_D_STATES else unroll


MAX_CONCURRENT_STEPS = 2
# Each thread reads and writes only its own lane of SMEM, except the dB/dC row sums, which are fenced explicitly
# with commit_smem(); the pipeline itself commits SMEM before every TMA store and fetch. So Pallas' conservative
# per-access barriers (two bar.sync per SMEM store) can be turned off. VMAMBA_MGPU_AUTO_BARRIERS=1 turns them back on
# (a debugging switch: it must not change results, only speed).
UNSAFE_NO_AUTO_BARRIERS = os.environ.get("VMAMBA_MGPU_AUTO_BARRIERS", "0") != "1"
# `_Plan.direct_store`'s default, on the fast plan's d_states (below): on since the GPU checks of 2026-12-01 after the
# `_end_direct_tile` barrier (benchmarks/results/gpu_kernel_tests_h200_direct_store.md: every d_state 1 case of both
# kernels; scan_sweep_h200.md: fused core at stage 1 1.21 -> 1.04 ms forward, 5.64 -> 4.19 ms forward+backward).
# VMAMBA_MGPU_DIRECT_STORE=0 turns it off (outputs through SMEM tiles and TMA stores).
DIRECT_STORE = os.environ.get("VMAMBA_MGPU_DIRECT_STORE", "1") == "1"
# `_Plan.approx_math`'s default: on since the checked sweep of 2026-12-01 (benchmarks/results/scan_sweep_h200.md:
# same error as the exact plan, fused core 1.4x faster at stage 1). VMAMBA_MGPU_APPROX_MATH=0 turns it off.
APPROX_MATH = os.environ.get("VMAMBA_MGPU_APPROX_MATH", "1") == "1"
# The d_states whose GPU kernel tests passed on the fast plan (approx_math, direct_store, and the fused core's
# short-sequence tiles): d_state 1 on 2026-12-01 (benchmarks/results/gpu_kernel_tests_h200_fast_plan.md,
# gpu_kernel_tests_h200_direct_store.md). Others keep libdevice's exact math, SMEM output tiles and the default tiles,
# on which they passed, until their tests rerun; approx_math=True / direct_store=True still ask for them by name.
# VMAMBA_MGPU_FAST_PLAN_D_STATES=1,16 runs benchmarks/gpu_kernel_tests.py with d_state 16 on it too.
FAST_PLAN_D_STATES = tuple(int(v) for v in os.environ.get("VMAMBA_MGPU_FAST_PLAN_D_STATES", "1").split(",") if v)
# `_Plan.splits`' default: unsplit. On the H200 every split plan was 5-33% slower at stages 1-2, forward and backward
# (benchmarks/results/scan_splits_h200.md). VMAMBA_MGPU_SPLITS sets it (the GPU tests ran with 3).
SPLITS = int(os.environ.get("VMAMBA_MGPU_SPLITS", "1"))
# `_Plan.dbc_by_xla`'s default: off. In the H200 sweeps of 2026-12-02 (benchmarks/results/scan_bwd_sweep_h200.md)
# it made the plain scan alone 15% faster at stage 1 (forward+backward 4.08 -> 3.48 ms back-to-back) but the SS2D
# composition around that same kernel 11% slower (5.16 -> 5.72 ms) and the fused core 6% slower at its default
# backward tile; so it is a knob, not a default. Every d_state 1 GPU kernel test passed with it on
# (gpu_kernel_tests_h200_dbc_by_xla.md). VMAMBA_MGPU_DBC_BY_XLA=1 turns it on.
DBC_BY_XLA = os.environ.get("VMAMBA_MGPU_DBC_BY_XLA", "0") == "1"
# `_Plan.cache_steps`' default: off. Right on the H200 (GPU kernel tests 24/24 at d_state 1) but no faster: the plain
# scan's stage-1 forward+backward 3.93 -> 3.91 ms, the fused core's 3.33 -> 4.19 ms (48 KB more SMEM at its backward
# tile of 32: fewer resident blocks); benchmarks/results/scan_cache_steps_h200.md. VMAMBA_MGPU_CACHE_STEPS=1 turns it
# on.
CACHE_STEPS = os.environ.get("VMAMBA_MGPU_CACHE_STEPS", "0") == "1"
# `_Plan.static_orders`' default (the fused core's four orders, each block compiled for its own): off. Right on the
# H200 (GPU kernel tests 10/10 of the d_state 1 cases that ran) but no faster at stage 1: forward 0.79 -> 0.81 ms,
# forward+backward 3.36 -> 3.36 ms back-to-back (benchmarks/results/scan_bwd_unroll_h200.md; the forward kernel is
# bound by its memory traffic, not by the index arithmetic this removes). VMAMBA_MGPU_STATIC_ORDERS=1 turns it on.
STATIC_ORDERS = os.environ.get("VMAMBA_MGPU_STATIC_ORDERS", "0") == "1"
# `_Plan.register_states`' default, on REGISTER_STATES_D_STATES (benchmarks/results/scan_register_states_h200.md;
# H200, bf16, back-to-back forward+backward; d_state 1 here). The plain scan: on since 2026-12-04, at backward tile
# 32: stage 1 3.33 -> 2.67 ms, GPU kernel tests 12/12. The fused core (backward tile capped at 16): on from stage
# 1's length up, where it pays (stage 1 2.43 -> 2.22 ms), off below: stage 2 1.48 -> 1.92 ms (stages 3 and 4 within
# 4%), GPU kernel tests 12/12 with it on at every length. VMAMBA_MGPU_REGISTER_STATES=1 / 0 turns it on / off for
# both, at every length.
REGISTER_STATES = ({"1": True, "0": False}[os.environ["VMAMBA_MGPU_REGISTER_STATES"]]
                   if "VMAMBA_MGPU_REGISTER_STATES" in os.environ else None)
# The d_states `register_states` defaults on for (same rules: the plain scan at every length, the fused core from
# FUSED_REGISTER_STATES_MIN_LENGTH). d_state 16 since 2026-12-04, at its default backward tile of 4 (H200, stage 1
# bf16, back-to-back forward+backward: plain 19.09 -> 10.08 ms, fused core 17.88 -> 11.90 ms; tile 8 was 2.5x / 3.2x
# slower, tile 16 exceeds SMEM), GPU kernel tests 12/12 for each with it on at every length
# (benchmarks/results/gpu_kernel_tests_h200_register_states_d16.md).
REGISTER_STATES_D_STATES = (1, 16)


def resolve_approx_math(approx_math: bool | None, d_state: int) -> bool:
    """None -> the module default for this d_state (see FAST_PLAN_D_STATES)."""
    if approx_math is not None:
        return bool(approx_math)
    return APPROX_MATH and d_state in FAST_PLAN_D_STATES


def is_supported() -> bool:
    """True on a Hopper (sm_90) or newer NVIDIA GPU: Mosaic GPU needs wgmma/TMA. Cheap: reads device attributes."""
    try:
        dev = jax.devices()[0]
    except RuntimeError:
        return False
    if dev.platform != "gpu":
        return False
    cc = getattr(dev, "compute_capability", None)
    try:
        return cc is not None and float(cc) >= 9.0
    except (TypeError, ValueError):
        return False


@dataclasses.dataclass(frozen=True)
class _Plan:
    """How the kernel's blocks map onto sequences (static: part of the compiled kernel).

    Block g of the grid's first axis is sequence (b, k) = divmod(g, K), with parameter set k. Its input u (and, in the
    backward, dy) is source row b * S + source[k] of the (batch * S, L, D) source arrays; `reverse[k]` walks it from
    the end. rank > 0: delta is formed in the kernel from the first `rank` rows of the projection array.
    """

    groups: int                       # K
    source: tuple[int, ...]           # per k, its source index (S = max + 1)
    reverse: tuple[bool, ...]         # per k
    rank: int                         # R (0: delta is an input)
    d_state: int
    tl_fwd: int
    tl_bwd: int
    softplus: bool
    unroll: int = 1
    bwd_unroll: int | None = None     # the backward kernel's (None: unroll's)
    # Every output (the forward's y and boundary states, the backward's du, d(delta) and dB/dC partials) goes from
    # registers straight to GMEM (coalesced: 128 lanes per row) instead of through SMEM tiles and TMA stores: no output
    # buffers, so more blocks fit on an SM (the lowering's SMEM at stage 1: forward 105 KB -> 41 KB, at tile 32
    # 55 -> 23 KB). It is also the path Pallas' Mosaic GPU interpreter runs (it has no predicated TMA stores).
    direct_store: bool = False
    # exp and log as the GPU's one-instruction approximations (ex2.approx / lg2.approx, ~2^-22 relative error; Mosaic
    # GPU's `approx_math`) instead of libdevice's accurate expf / logf, which are ~10-20 dependent instructions each.
    # Every step runs three of them (softplus' exp and log, exp(delta A)) on the chain of a latency-bound walk. The
    # interpreter computes them exactly, so only the GPU tests check this path.
    approx_math: bool = False
    # The walk cut into this many consecutive splits of whole tiles, each split its own block (a third grid axis), so
    # a stage-1 grid of 512 one-warpgroup blocks (batch 128 x 4 orders x one channel tile: ~4 an SM) becomes
    # splits x as many. The scan is linear in its state, so a split's entering state is known from the splits before
    # it: a summary kernel walks every split but the last from a zero state and returns its end state and its summed
    # delta (the split's decay is exp(A * sum delta)); XLA chains those over the splits (`_split_boundaries`); the
    # scan kernel then starts each split from its true state. The backward does the same for the adjoint carry, right
    # to left. About 1.6x the forward's arithmetic for splits x the parallelism.
    splits: int = 1
    # The backward's dB / dC (sums over channels, per step) left to XLA: the kernel writes each step's per-channel
    # products dh_j * delta * u and h_j * dy straight to GMEM ((G, 2N, Lp, Dp) f32, direct_store only) and XLA sums
    # them, instead of staging a tile's products in a (64-row, 128) f32 SMEM buffer for a cross-lane row sum. That
    # buffer is 32 KB of the backward's 109.5 KB at the fused core's stage-1 plan (bwd tile 32), and SMEM is what caps
    # its blocks an SM (2 of the 4 a stage-1 grid needs for one wave). Costs 2N f32 (Lp, Dp) writes and reads per
    # sequence, so for small d_state. Measured (scan_bwd_sweep_h200.md): more resident blocks bought the fused core
    # little (3% at bwd tile 16); the plain scan alone gained 15%, its SS2D composition lost 11% (see DBC_BY_XLA).
    dbc_by_xla: bool = False
    # The backward's recompute loop keeps each step's delta, softplus' derivative and decays exp(delta A_j) in an SMEM
    # tile ((tl_bwd, 2+N, 128) f32) for the adjoint loop, which otherwise forms them again: at d_state 1 that is the
    # step's R dts loads and FMAs (the in-kernel delta) and 4 of its MUFU ops (ex2, lg2, ex, ex2) against 3 SMEM loads.
    cache_steps: bool = False
    # The SS2D merge in the kernel (the fused core; direct_store only): (H, W) of the image whose row-major (Lp, Dp)
    # positions the orders' outputs are summed into. The forward adds each order's y, and the backward each order's
    # du, into one (batch, Lp, Dp) f32 array by atomic adds (`_accumulate`), a column-major source's position mapped
    # to its row-major pixel (`_merged_row`); the kernel's u is the row-major image and the sources are built from it
    # (`_sources`), so du is d(image). In place of XLA's merge of (batch*K, Lp, Dp) per-order outputs (4x the merged
    # array written and read back) and of du's per-order sums and transpose. The order of the adds is not fixed: y
    # and du may differ from run to run in the last bit.
    merge_hw: tuple[int, int] | None = None
    source_col_major: tuple[bool, ...] = ()    # per source: the column-major view of the image (merge_hw plans)
    # With merge_hw, the orders summed by XLA instead of the kernel's atomic adds: the kernel stores each order's y
    # (and in the backward its du) at the order's row-major pixels, a column-major source's rows mapped as for the
    # atomic adds, into per-order (batch*K, Lp, Dp) arrays, and XLA sums those over the orders (no transposes). dy is
    # read per source as in the atomic plans: 2 copies of the merged dy instead of 4, and du needs no transpose back.
    merge_by_xla: bool = False
    # Each block runs code compiled for its own order: one `pl.when` branch per distinct (walk direction, source
    # layout), those Python constants in it (`_order_branches`), instead of one body with them traced from the block's
    # order. A step's in-tile index is then t or TL-1-t (no multiply-add of a runtime direction flag), its SMEM and
    # GMEM addresses constant offsets in the unrolled loop, and the merge's row map (merge_hw) is the identity for the
    # row-major source. Costs code size (up to 4 copies of each walk); measured no faster (see STATIC_ORDERS).
    static_orders: bool = False
    # Each order's y stored in u's dtype (bf16 at bf16 compute) instead of f32: the scan is f32 in registers and
    # rounds once at the store, as the official kernel's output is in the input's dtype. The unmerged forward's
    # largest traffic is that store and XLA's read of it (each order's y at 128 lanes: 822 MB in f32 at VMamba-T's
    # stage 1); the orders are then summed in f32. Not for the atomic merge (its adds are f32). Its cotangent dy
    # likewise: the backward's padded dy copies and the kernel's reads of them in u's dtype (the official backward's
    # dout is in the input's dtype too), and its SMEM tiles half the size. The fused core's default at d_state 1 and 16
    # (`ss2d.pallas_mosaic_gpu.Y_IN_COMPUTE_DTYPE_D_STATES`).
    y_in_u_dtype: bool = False
    # The backward's recomputed states of a tile kept in registers instead of an SMEM tile ((tl_bwd + 1, N, 128) f32:
    # 16.5 KB of the fused core's 88.6 KB at stage 1, bwd tile 32): the recompute and adjoint loops are unrolled whole
    # in Python, so each state is a named value the adjoint step reads back, (tl_bwd + 1) N registers a thread. Fewer
    # SMEM bytes a block (3 blocks an SM fit in place of 2) and no SMEM store and two loads a step and state.
    register_states: bool = False
    # Pallas' Mosaic GPU interpreter parameters (tests on CPU), or None to compile for the GPU.
    interpret: object = None

    def __post_init__(self):
        if self.merge_hw is not None and (not self.direct_store or self.splits != 1):
            raise ValueError("the in-kernel merge (merge_hw) adds into its outputs straight from registers and walks "
                             "each sequence whole: it needs direct_store=True and splits=1")

    @property
    def sources(self) -> int:
        return max(self.source) + 1

    @property
    def any_reverse(self) -> bool:
        return any(self.reverse)

    @property
    def merged(self) -> bool:
        return self.merge_hw is not None

    @property
    def atomic_merge(self) -> bool:
        """The orders' outputs added by the kernel (`_accumulate`) into one array, not stored per order."""
        return self.merged and not self.merge_by_xla


def _pick(k, values):
    """values[k] for a traced k and a static tuple of ints (a python int when they are all equal)."""
    values = tuple(int(v) for v in values)
    if len(set(values)) == 1:
        return values[0]
    out = jnp.int32(values[0])
    for j, v in enumerate(values[1:], 1):
        out = jnp.where(k == j, jnp.int32(v), out)
    return out


def _walk(rev, i, n):
    """Index visited at walk step i of n: i, or n-1-i when rev (a traced 0/1, a Python bool, or None for never)."""
    if rev is None or rev is False:
        return i
    if rev is True:
        return n - 1 - i
    return i + rev * (n - 1 - 2 * i)


def _order_branches(plan, k):
    """The kernel body's branches, [(predicate, rev, col_major)]: each block runs the one whose predicate its order k
    meets (None: every block). With `static_orders` one per distinct (walk direction, source layout) of the orders,
    those as Python constants; else one for every block with them traced from k (`_pick`; None where no order
    reverses, or no plan merges)."""
    col = [plan.source_col_major[s] for s in plan.source] if plan.merged else [None] * plan.groups
    combos = {}
    for kk in range(plan.groups):
        combos.setdefault((bool(plan.reverse[kk]), col[kk]), []).append(kk)
    if not plan.static_orders or len(combos) == 1:
        rev = _pick(k, plan.reverse) if plan.any_reverse else None
        return [(None, rev, _pick(k, col) if plan.merged else None)]
    return [(functools.reduce(jnp.logical_or, [k == kk for kk in ks]), rev, col_major)
            for (rev, col_major), ks in combos.items()]


def _run_branches(branches, run):
    """run(rev, col_major) under each branch's predicate (`_order_branches`)."""
    for pred, rev, col_major in branches:
        if pred is None:
            run(rev, col_major)
        else:
            pl.when(pred)(functools.partial(run, rev, col_major))


def _zeros(plan):
    """A zero (128,) vector in the strided layout that SMEM row loads produce (loop carries must keep one layout;
    the interpreter has no layouts)."""
    z = jnp.zeros((LANES,), f32)
    return z if plan.interpret is not None else plgpu.layout_cast(z, plgpu.Layout.WG_STRIDED((LANES,), vec_size=1))


def _interpret_kwargs(plan):
    return {} if plan.interpret is None else {"interpret": plan.interpret}


def _launch(plan, body, out_type, grid, grid_names, scratch_types, operands, accumulators=()):
    """Runs `body` on a (grid, grid_names) grid of one-warpgroup blocks. `accumulators`: f32 arrays the kernel adds
    into (`_accumulate`), passed to the body after the operands as refs aliased in and out of the kernel.

    Returns (the outputs, the accumulated arrays)."""
    params = plgpu.CompilerParams(unsafe_no_auto_barriers=UNSAFE_NO_AUTO_BARRIERS, approx_math=plan.approx_math)
    if not accumulators:
        outs = plgpu.kernel(body, out_type=out_type, grid=grid, grid_names=grid_names, scratch_types=scratch_types,
                            compiler_params=params, **_interpret_kwargs(plan))(*operands)
        return outs, ()
    # plgpu.kernel's vmap wrapper takes no refs, so the same launch through pl.kernel (its mesh, scoped scratch).
    def scoped(*kernel_refs):
        pl.run_scoped(functools.partial(body, *kernel_refs), *scratch_types)

    @jax.jit  # refs in GMEM exist only under a jit
    def launch(operands, accumulators):
        refs = [jax.new_ref(a, memory_space=plgpu.GMEM) for a in accumulators]
        outs = pl.kernel(scoped, out_type=out_type, mesh=plgpu.Mesh(grid=grid, grid_names=grid_names),
                         compiler_params=params, **_interpret_kwargs(plan))(*operands, *refs)
        return outs, tuple(jax.freeze(r) for r in refs)

    return launch(list(operands), list(accumulators))


def _accumulate(plan, ref, value):
    """ref[...] += value for a (128,) GMEM row that blocks of other orders add into too: an atomic add on the GPU
    (red.global.add.f32 per lane), a read-modify-write in the interpreter (it runs the grid's blocks one by one and
    has no atomics)."""
    if plan.interpret is None:
        plgpu.atomic_add(ref, value)
    else:
        ref[...] = ref[...] + value


def _merged_row(plan, col_major, q):
    """The row-major pixel of position q of a source (merge_hw plans): q itself for the row-major view; for the
    column-major one (q = w*H + h) h*W + w, and q for the padded positions q >= H*W (their values are zero)."""
    if col_major is None or isinstance(col_major, int) and col_major == 0:
        return q
    H, W = plan.merge_hw
    transposed = jax.lax.rem(q, H) * W + jax.lax.div(q, H)
    inside = q < H * W
    return jnp.where(inside if isinstance(col_major, int) else (col_major == 1) & inside, transposed, q)


def _sources(plan, x):
    """(batch, Lp, Dp) row-major image -> (batch*S, Lp, Dp), its views in source order (merge_hw plans)."""
    batch, lp, dp = x.shape
    H, W = plan.merge_hw
    L = H * W

    def view(col_major):
        if not col_major:
            return x
        t = jnp.swapaxes(x[:, :L].reshape(batch, H, W, dp), 1, 2).reshape(batch, L, dp)
        return jnp.pad(t, ((0, 0), (0, lp - L), (0, 0)))

    return jnp.stack([view(c) for c in plan.source_col_major], axis=1).reshape(batch * plan.sources, lp, dp)


def _pick_tile(table, d_state):
    return table.get(d_state, table[16] if d_state > 1 else table[1])


LOG2E, LN2 = math.log2(math.e), math.log(2.0)


def _softplus(x2, softplus):
    """Returns (dt, d dt / d x) for x2 = x log2(e), delta before softplus in base-2 units when softplus is on (the
    parameters it is formed from are prescaled once per block, `_params`, so exp(x) is one ex2 and no per-step
    multiply), with the official threshold (x > 20 passes through); softplus' derivative is sigmoid =
    1 - exp(-softplus). exp2 of a large x2 is inf, whose log is inf, which the threshold's select drops, so no clamp."""
    if not softplus:
        return x2, None
    sp = jnp.log(1.0 + jnp.exp2(x2))
    big = x2 > SOFTPLUS_THRESHOLD * LOG2E
    return jnp.where(big, x2 * LN2, sp), jnp.where(big, 1.0, 1.0 - jnp.exp(-sp))


# The per-step scalars (dts, B, C) reach the kernels as f32 whatever the inputs' dtype: a read is then one SMEM load
# (a bf16 one also takes a convert on the walk: 8 of the ~55 instructions a forward step at VMamba-T's stage 1, by
# the PTX of benchmarks/results/kernel_dump_h200.json). The values are the same (bf16 -> f32 is exact) and the array
# is small (R + 2N rows a sequence against D channels).
PROJ_DTYPE = f32


class _Proj:
    """The per-step scalars travel as one array (G, rows, L), rows [dts_0..dts_{R-1}, B_0..B_{N-1}, C_0..C_{N-1}]:
    one TMA copy per tile. The SMEM tile is (rows, TL) when a row of `rows` values is under TMA's 16-byte minimum,
    else (TL, rows_p) time-major with rows padded to 32 bytes (TMA needs 16-byte rows, and a copy of a multiple of 128
    bytes, i.e. of 4 or more steps)."""

    def __init__(self, rank, d_state, itemsize):
        self.r, self.n = rank, d_state
        self.rows = rank + 2 * d_state
        self.time_minor = self.rows * itemsize < 16
        per = 32 // itemsize
        self.rows_p = self.rows if self.time_minor else per * math.ceil(self.rows / per)

    def gmem_view(self, x):  # x: (G, rows, L) -> the kernel's GMEM layout
        if self.time_minor:
            return x
        return jnp.pad(jnp.swapaxes(x, 1, 2), ((0, 0), (0, 0), (0, self.rows_p - self.rows)))

    def spec(self, tl, chunk):
        if self.time_minor:
            return pl.BlockSpec((self.rows, tl), lambda i: (0, chunk(i)))
        return pl.BlockSpec((tl, self.rows_p), lambda i: (chunk(i), 0))

    def _read(self, ref, row, t):
        return (ref[row, t] if self.time_minor else ref[t, row]).astype(f32)

    def dts(self, ref, r, t):
        return self._read(ref, r, t)

    def b(self, ref, j, t):
        return self._read(ref, self.r + j, t)

    def c(self, ref, j, t):
        return self._read(ref, self.r + self.n + j, t)


def min_seq_tile(rank: int, d_state: int, itemsize: int) -> int:
    """The shortest sequence tile the projection tile's TMA copy can take. A time-minor (rows, TL) tile is one copy of
    rows x TL x itemsize bytes, which must reach 128 (the plain scan's N = 1 bf16 B/C tile at TL 16, 64 bytes, stopped
    the GPU with CUDA_ERROR_MISALIGNED_ADDRESS, and every later call of the process with it); time-major rows are 32
    bytes, so 4 steps."""
    proj = _Proj(rank, d_state, itemsize)
    return -(-128 // (proj.rows * itemsize)) if proj.time_minor else 4


def check_tma_tiles(plan: _Plan, itemsize: int) -> None:
    """Raises for sequence tiles shorter than `min_seq_tile` (the interpreter has no such limit)."""
    need = min_seq_tile(plan.rank, plan.d_state, itemsize)
    if plan.interpret is None and min(plan.tl_fwd, plan.tl_bwd) < need:
        raise ValueError(f"sequence tiles ({plan.tl_fwd}, {plan.tl_bwd}) are too short for the projection tile's TMA "
                         f"copy at {itemsize}-byte elements (needs 128 bytes): pass seq_tile and bwd_seq_tile >= "
                         f"{need}")


def _end_direct_tile(plan) -> None:
    """The end of a pipeline step's body on the direct_store path: a warpgroup barrier (commit_smem) before
    `emit_pipeline` refills this step's input slots. With SMEM outputs the pipeline commits SMEM (fence + barrier)
    before storing them, so no thread is still reading a slot when its next tile's TMA lands; with every output in
    GMEM it skips that (`copies_out_in_loop` is False) and issues the refill right after the body, so a lagging warp
    read the next tile's data. That race is invisible to the interpreter; it was the direct_store plans' 0.08-0.36
    errors on the H200: with this barrier the same plans pass every GPU check (benchmarks/results/scan_sweep_h200.md,
    gpu_kernel_tests_h200_direct_store.md)."""
    if plan.direct_store:
        plgpu.commit_smem()


def _block_coords(plan):
    """(g, k, source row, rev flag or None, first channel) of this block."""
    g = jax.lax.axis_index("g")
    k = g % plan.groups
    src = (g // plan.groups) * plan.sources + _pick(k, plan.source)
    rev = _pick(k, plan.reverse) if plan.any_reverse else None
    d0 = pl.multiple_of(jax.lax.axis_index("d") * LANES, LANES)
    return g, k, src, rev, d0


def _ddl_row(plan, g, G):
    """The backward's d(delta) row for sequence g = b * K + k: g itself when delta is an input (it is dl's
    cotangent), else order-major, k * batch + b, so that each order's positions are one (batch * Lp, Dp) matrix for
    `_scan_bwd`'s contractions with the dts and dt_proj's weight (batched GEMMs over K without a transpose)."""
    if plan.rank == 0:
        return g
    return (g % plan.groups) * (G // plan.groups) + g // plan.groups


def _grid(plan, G, n_ch, parts):
    """(grid, grid_names): (G, n_ch) blocks, times `parts` splits of the walk when the plan splits it."""
    if plan.splits > 1:
        return (G, n_ch, parts), ("g", "d", "c")
    return (G, n_ch), ("g", "d")


def _split_index(plan):
    """This block's split of the walk (0 when the plan does not split it)."""
    return jax.lax.axis_index("c") if plan.splits > 1 else 0


def _load_rows(src_ref, smem, bar, rows):
    """`rows` (128,) register vectors from a (rows, 128) GMEM slice, through SMEM (one TMA copy)."""
    plgpu.copy_gmem_to_smem(src_ref, smem, bar)
    plgpu.barrier_wait(bar)
    return tuple(smem[j] for j in range(rows))


def _tiling(plan, x, proj_arr, tl):
    """A walk kernel's static sizes for sequence tile `tl`: (G, Lp, Dp, tiles, channel tiles, tiles per split,
    the `_Proj` view, proj_arr in its GMEM layout). x is the kernel's (rows, Lp, Dp) sequence input."""
    _, lp, dp = x.shape
    n_seq = lp // tl
    proj = _Proj(plan.rank, plan.d_state, proj_arr.dtype.itemsize)
    return proj_arr.shape[0], lp, dp, n_seq, dp // LANES, n_seq // plan.splits, proj, proj.gmem_view(proj_arr)


def _params(plan, p_smem):
    """Register vectors from the (2+N+R, 128) parameter tile: D, bias, A_j, dt_proj rows W_r, in the kernels' base-2
    units: A_j log2(e) (exp(dt A) = exp2(dt A_j log2 e)) and, with softplus, bias and W_r times log2(e) (delta
    before softplus as `_softplus`'s x2). Scaled once per block instead of a multiply per step."""
    n, r = plan.d_state, plan.rank
    s = LOG2E if plan.softplus else 1.0
    return (p_smem[0], p_smem[1] * s, [p_smem[2 + j] * LOG2E for j in range(n)],
            [p_smem[2 + n + q] * s for q in range(r)])


def _delta_raw(plan, proj, dl_s, pr_s, W, p):
    """delta before bias at tile row p (with softplus, times log2(e): `_params`): an input (dl_s) or, low-rank,
    sum_r dts_r(p) W_r."""
    if plan.rank == 0:
        dl = dl_s[p].astype(f32)
        return dl * LOG2E if plan.softplus else dl
    acc = proj.dts(pr_s, 0, p) * W[0]
    for q in range(1, plan.rank):
        acc = acc + proj.dts(pr_s, q, p) * W[q]
    return acc


# ------------------------------------------------------------------------------------------------ forward

def _forward(plan, u, dl, proj_arr, prm, *, save_states, h0=None):
    """u (batch*S, Lp, Dp); dl (G, Lp, Dp) or None (rank > 0); proj_arr (G, rows, Lp); prm (K, 2+N+R, Dp) f32;
    h0 (G, splits, N, Dp) f32, the state entering each split (`_split_boundaries`), when the plan splits the walk.

    Returns y (G, Lp, Dp) f32 (u's dtype with plan.y_in_u_dtype) by position (merge_hw plans: (batch, Lp, Dp),
    the orders summed by row-major pixel)
    and, if save_states, hs (G, Lp/tl, N, Dp) f32 (state entering each tile, in walk order)."""
    n, tl = plan.d_state, plan.tl_bwd if save_states else plan.tl_fwd
    G, lp, dp, n_seq, n_ch, n_loc, proj, proj_arr = _tiling(plan, u, proj_arr, tl)
    has_dl, merged, atomic = plan.rank == 0, plan.merged, plan.atomic_merge

    y_dtype = u.dtype if plan.y_in_u_dtype else f32
    out_shapes = [] if atomic else [jax.ShapeDtypeStruct((G, lp, dp), y_dtype)]
    if save_states:
        out_shapes.append(jax.ShapeDtypeStruct((G, n_seq, n, dp), f32))

    def body(*refs):
        u_ref, *refs = refs
        dl_ref = refs.pop(0) if has_dl else None
        pr_ref, p_ref, *refs = refs
        h0_ref = refs.pop(0) if h0 is not None else None
        y_acc = refs.pop(0) if atomic else None
        outs, (p_smem, bar, *h_scratch) = refs[:len(out_shapes)], refs[len(out_shapes):]
        g, k, src, _, d0 = _block_coords(plan)
        c = _split_index(plan)
        plgpu.copy_gmem_to_smem(p_ref.at[k, :, pl.ds(d0, LANES)], p_smem, bar)
        plgpu.barrier_wait(bar)
        Dv, bias, A, W = _params(plan, p_smem)
        walk = lambda i: c * n_loc + i  # noqa: E731 - the walk tile of this split's pipeline step i
        h_init = tuple(_zeros(plan) for _ in range(n)) if h0 is None else _load_rows(
            h0_ref.at[g, c, :, pl.ds(d0, LANES)], *h_scratch, n)

        def run(rev, col_major):  # the walk of one branch (`_order_branches`)
            chunk = lambda i: _walk(rev, walk(i), n_seq)  # noqa: E731 - its position tile

            def tile(idx, u_s, *rest):
                if has_dl:
                    dl_s, pr_s, *o_s, h = rest
                else:
                    dl_s, (pr_s, *o_s, h) = None, rest
                y_s = None if atomic else o_s[0]
                if save_states:  # the state entering walk tile idx
                    for j in range(n):
                        if plan.direct_store:
                            o_s[-1][walk(idx[0]), j] = h[j]
                        else:
                            o_s[-1][j] = h[j]
                # y's row: in the SMEM tile, or in the sequence when y goes straight to GMEM.
                y_row = (lambda p: chunk(idx[0]) * tl + p) if plan.direct_store else (lambda p: p)

                def step(t, h):
                    p = _walk(rev, t, tl)
                    dt, _ = _softplus(_delta_raw(plan, proj, dl_s, pr_s, W, p) + bias, plan.softplus)
                    uu = u_s[p].astype(f32)
                    dtu = dt * uu
                    y = Dv * uu
                    h_new = []
                    for j in range(n):
                        hj = jnp.exp2(dt * A[j]) * h[j] + dtu * proj.b(pr_s, j, p)
                        y = y + hj * proj.c(pr_s, j, p)
                        h_new.append(hj)
                    row = _merged_row(plan, col_major, y_row(p)) if merged else y_row(p)
                    if atomic:
                        _accumulate(plan, y_acc.at[g // plan.groups, row, pl.ds(d0, LANES)], y)
                    else:
                        y_s[row] = y.astype(y_s.dtype)
                    return tuple(h_new)

                h = jax.lax.fori_loop(0, tl, step, h, unroll=plan.unroll)
                _end_direct_tile(plan)
                return h

            seq = pl.BlockSpec((tl, LANES), lambda i: (chunk(i), 0))
            in_specs = [seq] + ([seq] if has_dl else []) + [proj.spec(tl, chunk)]
            in_refs = [u_ref.at[src, :, pl.ds(d0, LANES)]] + ([dl_ref.at[g, :, pl.ds(d0, LANES)]] if has_dl else [])
            in_refs.append(pr_ref.at[g])
            if plan.direct_store:
                out_specs = [pl.BlockSpec(memory_space=plgpu.GMEM)] * len(out_shapes)
            else:
                out_specs = [seq] + ([pl.BlockSpec((None, n, LANES), lambda i: (walk(i), 0, 0))] if save_states else [])
            out_refs = [] if atomic else [outs[0].at[g, :, pl.ds(d0, LANES)]]
            if save_states:
                out_refs.append(outs[-1].at[g, :, :, pl.ds(d0, LANES)])
            plgpu.emit_pipeline(
                tile, grid=(n_loc,), in_specs=in_specs, out_specs=out_specs,
                max_concurrent_steps=MAX_CONCURRENT_STEPS,
                init_carry=h_init,
            )(*in_refs, *out_refs)

        _run_branches(_order_branches(plan, k), run)

    operands = [u] + ([dl] if has_dl else []) + [proj_arr, prm] + ([h0] if h0 is not None else [])
    grid, grid_names = _grid(plan, G, n_ch, plan.splits)
    outs, acc = _launch(
        plan, body, out_shapes, grid, grid_names,
        [plgpu.SMEM((prm.shape[1], LANES), f32), plgpu.Barrier(num_arrivals=1)] + (
            [plgpu.SMEM((n, LANES), f32), plgpu.Barrier(num_arrivals=1)] if h0 is not None else []),
        operands, [jnp.zeros((G // plan.groups, lp, dp), f32)] if atomic else ())
    outs = list(acc) + list(outs)
    return tuple(outs) if save_states else (outs[0], None)


# ------------------------------------------------------------------------------------------------ splits

def _split_summaries(plan, x, dl, proj_arr, prm, *, adjoint):
    """What each split of the walk does to a state: its end state from a zero start and its summed delta.

    Forward (x = u (batch*S, Lp, Dp), by source row): splits 0..P-2 in walk order, h_t = exp(dt A) h + dt u B.
    Adjoint (x = dy (batch*S, Lp, Dp), by source row: its orders share it, `_sum_orders`): splits 1..P-1 walked
    backwards, the backward kernel's carry dh <- (dh + dy C) exp(dt A). Returns (G, P-1, 1+N, Dp) f32, rows [sum of
    dt, state_0 .. state_{N-1}]; a split's decay of the state it is entered with is exp(A * sum dt) (the product of its
    steps' exp(dt A))."""
    n, tl, P = plan.d_state, plan.tl_fwd, plan.splits
    G, lp, dp, n_seq, n_ch, n_loc, proj, proj_arr = _tiling(plan, x, proj_arr, tl)
    has_dl = plan.rank == 0

    def body(*refs):
        x_ref, *refs = refs
        dl_ref = refs.pop(0) if has_dl else None
        pr_ref, p_ref, out_ref, p_smem, bar = refs
        g, k, src, rev, d0 = _block_coords(plan)
        c = jax.lax.axis_index("c") + int(adjoint)
        plgpu.copy_gmem_to_smem(p_ref.at[k, :, pl.ds(d0, LANES)], p_smem, bar)
        plgpu.barrier_wait(bar)
        Dv, bias, A, W = _params(plan, p_smem)
        walk = (lambda i: c * n_loc + n_loc - 1 - i) if adjoint else (lambda i: c * n_loc + i)
        chunk = lambda i: _walk(rev, walk(i), n_seq)  # noqa: E731 - position tile of pipeline step i

        def tile(idx, x_s, *rest):
            if has_dl:
                dl_s, pr_s, carry = rest
            else:
                dl_s, (pr_s, carry) = None, rest

            def step(i, carry):
                h, total = carry
                p = _walk(rev, tl - 1 - i if adjoint else i, tl)
                dt, _ = _softplus(_delta_raw(plan, proj, dl_s, pr_s, W, p) + bias, plan.softplus)
                xx = x_s[p].astype(f32)
                if adjoint:
                    h = tuple((h[j] + xx * proj.c(pr_s, j, p)) * jnp.exp2(dt * A[j]) for j in range(n))
                else:
                    h = tuple(jnp.exp2(dt * A[j]) * h[j] + dt * xx * proj.b(pr_s, j, p) for j in range(n))
                return h, total + dt

            carry = jax.lax.fori_loop(0, tl, step, carry, unroll=plan.unroll)
            plgpu.commit_smem()  # no outputs, so no commit before the pipeline refills this step's input slots
            return carry

        seq = pl.BlockSpec((tl, LANES), lambda i: (chunk(i), 0))
        in_specs = [seq] + ([seq] if has_dl else []) + [proj.spec(tl, chunk)]
        in_refs = [x_ref.at[src, :, pl.ds(d0, LANES)]]
        in_refs += ([dl_ref.at[g, :, pl.ds(d0, LANES)]] if has_dl else []) + [pr_ref.at[g]]
        zero = _zeros(plan)
        h, total = plgpu.emit_pipeline(
            tile, grid=(n_loc,), in_specs=in_specs, out_specs=[], max_concurrent_steps=MAX_CONCURRENT_STEPS,
            init_carry=(tuple(zero for _ in range(n)), zero),
        )(*in_refs)
        p_smem[0] = total
        for j in range(n):
            p_smem[1 + j] = h[j]
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(p_smem.at[pl.ds(0, 1 + n)], out_ref.at[g, c - int(adjoint), :, pl.ds(d0, LANES)])
        plgpu.wait_smem_to_gmem(0)

    operands = [x] + ([dl] if has_dl else []) + [proj_arr, prm]
    grid, grid_names = _grid(plan, G, n_ch, P - 1)
    return _launch(plan, body, jax.ShapeDtypeStruct((G, P - 1, 1 + n, dp), f32), grid, grid_names,
                   [plgpu.SMEM((prm.shape[1], LANES), f32), plgpu.Barrier(num_arrivals=1)], operands)[0]


def _split_boundaries(plan, summaries, prm, *, adjoint):
    """(G, P-1, 1+N, Dp) split summaries -> (G, P, N, Dp) f32: the state (adjoint: the carry) each split starts from.

    Forward: H_0 = 0, H_{c+1} = exp(A sum_c dt) H_c + h_c. Adjoint, right to left: DH_{P-1} = 0,
    DH_{c-1} = exp(A sum_c dt) DH_c + dh_c. P is small (a few splits), so a Python loop of elementwise ops."""
    G, n = summaries.shape[0], plan.d_state
    A = jnp.tile(prm[:, 2:2 + n], (G // plan.groups, 1, 1))      # (G, N, Dp): sequence g = b*K + k has A_k
    h = jnp.zeros((G, n, summaries.shape[-1]), f32)
    out = [h]
    for c in (reversed(range(plan.splits - 1)) if adjoint else range(plan.splits - 1)):
        h = jnp.exp(A * summaries[:, c, :1]) * h + summaries[:, c, 1:]
        out.append(h)
    return jnp.stack(out[::-1] if adjoint else out, axis=1)


def _split_starts(plan, x, dl, proj_arr, prm, *, adjoint):
    """None for an unsplit walk, else the (G, P, N, Dp) states (adjoint: carries) the splits start from."""
    if plan.splits == 1:
        return None
    summaries = _split_summaries(plan, x, dl, proj_arr, prm, adjoint=adjoint)
    return _split_boundaries(plan, summaries, prm, adjoint=adjoint)


# ------------------------------------------------------------------------------------------------ backward

def _backward(plan, u, dl, proj_arr, prm, hs, dy, dh0=None):
    """dy (batch*S, Lp, Dp) f32 (u's dtype with plan.y_in_u_dtype) by source row and position (y's cotangent: the
    orders of a source share it, `_sum_orders`; merge_hw plans: the merged dy in each source's layout, `_sources`);
    dh0 (G, splits, N, Dp) f32, the adjoint carry each split's backward walk starts from (`_split_boundaries`), when
    the plan splits the walk.
    Returns du, ddl (G, Lp, Dp) per sequence (u's dtype; ddl is d/d(delta before bias), its rows order-major
    (k * batch + b) when plan.rank > 0, `_ddl_row`; merge_hw plans: du (batch, Lp, Dp) f32, summed over the orders
    by row-major pixel); dBC (G, 2N, Lp) f32 (summed over channel tiles); dprm (G, 2+N+R, Dp) f32 per sequence
    [dD, dbias, dA_j, dW_r] (dW: dt_proj's weight, rank > 0)."""
    n, tl, P, r = plan.d_state, plan.tl_bwd, plan.splits, plan.rank
    G, lp, dp, n_seq, n_ch, n_loc, proj, proj_arr = _tiling(plan, u, proj_arr, tl)
    has_dl, merged, atomic = plan.rank == 0, plan.merged, plan.atomic_merge
    rows = tl * n                                   # dB (or dC) rows per tile: p*N + j
    rows_pad = ROWS * math.ceil(2 * rows / ROWS)    # dB rows then dC rows, padded to the WGMMA row tile
    ddl_dtype = dl.dtype if has_dl else u.dtype
    by_xla, regs = plan.dbc_by_xla, plan.register_states
    bwd_unroll = plan.unroll if plan.bwd_unroll is None else plan.bwd_unroll
    if by_xla and not plan.direct_store:
        raise ValueError("dbc_by_xla writes its products straight to GMEM: it needs direct_store=True")

    out_shapes = [] if atomic else [jax.ShapeDtypeStruct((G, lp, dp), u.dtype)]
    out_shapes += [
        jax.ShapeDtypeStruct((G, lp, dp), ddl_dtype),
        # by XLA: per step and channel [dB products | dC products]; else per tile: [dB rows | dC rows | padding]
        jax.ShapeDtypeStruct((G, 2 * n, lp, dp) if by_xla else (G, n_ch, n_seq, rows_pad), f32),
        jax.ShapeDtypeStruct((G, P, 2 + n + r, dp), f32),            # per split, summed below
    ]

    def body(*refs):
        u_ref, *refs = refs
        dl_ref = refs.pop(0) if has_dl else None
        pr_ref, p_ref, hs_ref, dy_ref, *refs = refs
        dh0_ref = refs.pop(0) if dh0 is not None else None
        du_ref = refs.pop(0)  # atomic merge: the accumulator (an input ref), else the first output
        ddl_ref, dbc_ref, dp_ref, p_smem, bar, *refs = refs
        st_smem = None if regs else refs.pop(0)
        cache = refs.pop(0) if plan.cache_steps else None  # per walk step t: [dt, dsp (softplus), a_0..a_{N-1}]
        red_smem = None if by_xla else refs.pop(0)
        h_scratch = refs
        g, k, src, _, d0 = _block_coords(plan)
        c = _split_index(plan)
        dti = jax.lax.axis_index("d")
        plgpu.copy_gmem_to_smem(p_ref.at[k, :, pl.ds(d0, LANES)], p_smem, bar)
        plgpu.barrier_wait(bar)
        Dv, bias, A, W = _params(plan, p_smem)
        back = lambda i: c * n_loc + n_loc - 1 - i  # noqa: E731 - walk tile of this split's backward step i

        def run(rev, col_major):  # the walk of one branch (`_order_branches`)
            chunk = lambda i: _walk(rev, back(i), n_seq)  # noqa: E731 - its position tile
            a_row = 1 + plan.softplus  # the cache's first decay row

            def tile(idx, u_s, *rest):
                if has_dl:
                    dl_s, pr_s, hs_s, dy_s, *o_s, carry = rest
                else:
                    dl_s, (pr_s, hs_s, dy_s, *o_s, carry) = None, rest
                du_s, ddl_s, dbc_s = [None] * (3 - len(o_s)) + o_s
                # du's and d(delta)'s row: in the SMEM tiles, or in the sequence when they go straight to GMEM.
                g_row = (lambda p: chunk(idx[0]) * tl + p) if plan.direct_store else (lambda p: p)

                def inputs(p):
                    dt, dsp = _softplus(_delta_raw(plan, proj, dl_s, pr_s, W, p) + bias, plan.softplus)
                    return dt, dsp, u_s[p].astype(f32)

                def recompute(t, h):  # the state after walk step t of the tile (st_smem[t + 1])
                    p = _walk(rev, t, tl)
                    dt, dsp, uu = inputs(p)
                    if cache is not None:
                        cache[t, 0] = dt
                        if plan.softplus:
                            cache[t, 1] = dsp
                    dtu = dt * uu
                    h_new = []
                    for j in range(n):
                        a = jnp.exp2(dt * A[j])
                        if cache is not None:
                            cache[t, a_row + j] = a
                        hj = a * h[j] + dtu * proj.b(pr_s, j, p)
                        if not regs:
                            st_smem[t + 1, j] = hj
                        h_new.append(hj)
                    return tuple(h_new)

                h_in = tuple(hs_s[j] for j in range(n))
                if regs:  # the tile's states as Python values: both loops unrolled whole, `state` a static index
                    hist = [h_in]
                    for t in range(tl):
                        hist.append(recompute(t, hist[-1]))
                    state = lambda t, j: hist[t][j]  # noqa: E731 - the state entering walk step t
                else:
                    for j in range(n):
                        st_smem[0, j] = hs_s[j]
                    jax.lax.fori_loop(0, tl, recompute, h_in, unroll=bwd_unroll)
                    state = lambda t, j: st_smem[t, j]  # noqa: E731

                def step(i, carry):
                    dh, dA, dD, dbias, dW = carry
                    t = tl - 1 - i
                    p = _walk(rev, t, tl)
                    if cache is None:
                        dt, dsp, uu = inputs(p)
                    else:
                        dt, dsp, uu = cache[t, 0], cache[t, 1] if plan.softplus else None, u_s[p].astype(f32)
                    dy = dy_s[p].astype(f32)
                    dtu = dt * uu
                    ddt = _zeros(plan)
                    dhb = _zeros(plan)
                    dh_new, dA_new = [], []
                    for j in range(n):
                        b = proj.b(pr_s, j, p)
                        c = proj.c(pr_s, j, p)
                        if by_xla:
                            dbc_s[n + j, g_row(p)] = state(t + 1, j) * dy               # dC product
                        else:
                            red_smem[rows + p * n + j] = state(t + 1, j) * dy        # dC row
                        dhj = dh[j] + dy * c                                          # adjoint of h_t
                        a = jnp.exp2(dt * A[j]) if cache is None else cache[t, a_row + j]
                        gj = dhj * state(t, j) * a
                        ddt = ddt + gj * A[j]                                         # x log2(e), see below
                        dhb = dhb + dhj * b
                        if by_xla:
                            dbc_s[j, g_row(p)] = dhj * dtu                              # dB product
                        else:
                            red_smem[p * n + j] = dhj * dtu                           # dB row
                        dA_new.append(dA[j] + gj * dt)
                        dh_new.append(dhj * a)
                    ddt = ddt * LN2 + dhb * uu                                        # A_j's units back
                    draw = ddt * dsp if plan.softplus else ddt
                    du = dy * Dv + dhb * dt
                    du_row = _merged_row(plan, col_major, g_row(p)) if merged else g_row(p)
                    if atomic:
                        _accumulate(plan, du_ref.at[g // plan.groups, du_row, pl.ds(d0, LANES)], du)
                    else:
                        du_s[du_row] = du.astype(du_s.dtype)
                    ddl_s[g_row(p)] = draw.astype(ddl_s.dtype)
                    # dt_proj's weight: dl = sum_r dts_r W_r, so dW_r sums draw * dts_r over the walk (the dts are
                    # this step's loads for its delta already), in place of an XLA pass over d(delta).
                    dW = tuple(dW[q] + draw * proj.dts(pr_s, q, p) for q in range(r))
                    return tuple(dh_new), tuple(dA_new), dD + dy * uu, dbias + draw, dW

                if regs:
                    for i in range(tl):
                        carry = step(i, carry)
                else:
                    carry = jax.lax.fori_loop(0, tl, step, carry, unroll=bwd_unroll)
                if by_xla:
                    _end_direct_tile(plan)
                    return carry
                plgpu.commit_smem()  # the row sums read rows other threads wrote
                if plan.interpret is None:  # row sums need the WGMMA register layout; the interpreter has no layouts
                    sums = plgpu.load(red_smem, (), layout=plgpu.Layout.WGMMA, optimized=False).sum(axis=1)
                else:
                    sums = red_smem[...].sum(axis=1)
                if plan.direct_store:
                    dbc_s[chunk(idx[0])] = sums
                else:
                    dbc_s[...] = sums
                _end_direct_tile(plan)  # also: the next tile's steps overwrite red_smem, which every thread just read
                return carry

            seq = pl.BlockSpec((tl, LANES), lambda i: (chunk(i), 0))
            grad_spec = pl.BlockSpec(memory_space=plgpu.GMEM) if plan.direct_store else seq
            zero = _zeros(plan)
            dh_init = tuple(zero for _ in range(n)) if dh0 is None else _load_rows(
                dh0_ref.at[g, c, :, pl.ds(d0, LANES)], *h_scratch, n)
            init = (dh_init, tuple(zero for _ in range(n)), zero, zero, tuple(zero for _ in range(r)))
            in_specs = [seq] + ([seq] if has_dl else []) + [
                proj.spec(tl, chunk), pl.BlockSpec((None, n, LANES), lambda i: (back(i), 0, 0)), seq]
            in_refs = [u_ref.at[src, :, pl.ds(d0, LANES)]] + ([dl_ref.at[g, :, pl.ds(d0, LANES)]] if has_dl else [])
            in_refs += [pr_ref.at[g], hs_ref.at[g, :, :, pl.ds(d0, LANES)],
                        dy_ref.at[src, :, pl.ds(d0, LANES)]]
            out_refs = [] if atomic else [du_ref.at[g, :, pl.ds(d0, LANES)]]
            out_refs += [ddl_ref.at[_ddl_row(plan, g, G), :, pl.ds(d0, LANES)],
                         dbc_ref.at[g, :, :, pl.ds(d0, LANES)] if by_xla else dbc_ref.at[g, dti]]
            dh, dA, dD, dbias, dW = plgpu.emit_pipeline(
                tile, grid=(n_loc,), in_specs=in_specs,
                out_specs=[grad_spec] * (len(out_refs) - 1) + [
                    pl.BlockSpec(memory_space=plgpu.GMEM) if plan.direct_store
                    else pl.BlockSpec((None, rows_pad), lambda i: (chunk(i), 0))],
                max_concurrent_steps=MAX_CONCURRENT_STEPS,
                init_carry=init,
            )(*in_refs, *out_refs)

            # Per-channel parameter grads of this (sequence, channel tile): written once.
            p_smem[0] = dD
            p_smem[1] = dbias
            for j in range(n):
                p_smem[2 + j] = dA[j]
            for q in range(r):
                p_smem[2 + n + q] = dW[q]
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(p_smem.at[pl.ds(0, 2 + n + r)], dp_ref.at[g, c, :, pl.ds(d0, LANES)])
            plgpu.wait_smem_to_gmem(0)

        _run_branches(_order_branches(plan, k), run)

    operands = [u] + ([dl] if has_dl else []) + [proj_arr, prm, hs, dy] + ([dh0] if dh0 is not None else [])
    grid, grid_names = _grid(plan, G, n_ch, P)
    outs, acc = _launch(
        plan, body, out_shapes, grid, grid_names,
        [plgpu.SMEM((prm.shape[1], LANES), f32), plgpu.Barrier(num_arrivals=1)] + (
            [] if regs else [plgpu.SMEM((tl + 1, n, LANES), f32)]) + (
            [plgpu.SMEM((tl, 1 + plan.softplus + n, LANES), f32)] if plan.cache_steps else []) + (
            [] if by_xla else [plgpu.SMEM((rows_pad, LANES), f32)]) + (
            [plgpu.SMEM((n, LANES), f32), plgpu.Barrier(num_arrivals=1)] if dh0 is not None else []),
        operands, [jnp.zeros((G // plan.groups, lp, dp), f32)] if atomic else ())
    du, ddl, dbc, dprm = list(acc) + list(outs)
    if by_xla:
        return du, ddl, dbc.sum(-1), dprm.sum(1)                                   # (G, 2N, Lp): rows [B_0.., C_0..]
    dbc = dbc.sum(1)[..., :2 * rows].reshape(G, n_seq, 2, tl, n)      # (G, tiles, {B,C}, TL, N)
    dBC = jnp.moveaxis(dbc, (2, 4), (1, 2)).reshape(G, 2 * n, lp)                  # rows [B_0.., C_0..]
    return du, ddl, dBC, dprm.sum(1)


# ------------------------------------------------------------------------------------------------ custom_vjp core

@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def scan(plan, u, dl, proj_arr, prm):
    """The laid-out op. u (batch*S, Lp, Dp); dl (G, Lp, Dp) or None when plan.rank > 0; proj_arr (G, R+2N, Lp) rows
    [dts | B | C]; prm (K, 2+N+R, Dp) f32 rows [D, bias, A_0.., W_0..] (W_r: dt_proj's weight column r).
    Returns y (batch*S, Lp, Dp) f32 by source row and position, the sum of that source's orders' outputs (G = batch*K
    sequences; y per sequence where no two orders share a source). Differentiable in u, dl, proj_arr and prm.
    merge_hw plans: u is the (batch, Lp, Dp) row-major image and y (batch, Lp, Dp) the orders' sum by pixel."""
    y = _forward_walk(plan, _kernel_u(plan, u), dl, proj_arr, prm, save_states=False)[0]
    return _sum_orders(plan, y).astype(f32)


def _sum_orders(plan, x):
    """The kernel's (batch*K, Lp, Dp) per-order outputs (y, or du), summed in f32 over the orders that share a row of
    the result. Unmerged plans: per source, each order's output being by position in it -> (batch*S, Lp, Dp) f32,
    or x itself when no two orders share a source. So y's cotangent dy is one copy per source, not per order (the
    orders of a source read the same dy: 2 copies of it for SS2D's 4 orders). merge_by_xla plans: over all orders,
    each stored by row-major pixel -> (batch, Lp, Dp) f32. Atomic plans: x itself (already summed)."""
    if plan.atomic_merge or (not plan.merged and plan.source == tuple(range(plan.groups))):
        return x
    G, lp, dp = x.shape
    K = plan.groups
    x32 = x.reshape(G // K, K, lp, dp).astype(f32)
    if plan.merged:
        return x32.sum(1)
    rows = [sum(x32[:, k] for k in range(K) if plan.source[k] == s) for s in range(plan.sources)]
    return jnp.stack(rows, axis=1).reshape(G // K * plan.sources, lp, dp)


def _kernel_u(plan, u):
    """The kernel's (batch*S, Lp, Dp) sources: u itself, or built from the image for merge_hw plans."""
    return _sources(plan, u) if plan.merged else u


def _forward_walk(plan, u, dl, proj_arr, prm, *, save_states):
    """`_forward`, with the splits' entering states first when the plan splits the walk."""
    h0 = _split_starts(plan, u, dl, proj_arr, prm, adjoint=False)
    return _forward(plan, u, dl, proj_arr, prm, save_states=save_states, h0=h0)


def saves_states(plan: _Plan) -> bool:
    """Whether the training forward keeps the boundary states as a residual for the backward, or the backward
    recomputes them (one more forward walk) when it starts.

    They are (Lp / tl_bwd) x N per channel, fp32: for N = 1 at tile 32 a 32nd of y's size, but for N = 16 at tile 4
    (the backward's SMEM allows no more) 4x y's size, held for every layer from the forward to its backward: that
    made Res-VMamba-S's train step (VMamba-S v0, 33 blocks of N = 16) ask for 99 GiB at batch 128 on an H200. So they
    are saved when they take at most a quarter of y's memory (tl_bwd >= 4 N), else recomputed: the memory then lives
    only inside one layer's backward."""
    return plan.tl_bwd >= 4 * plan.d_state


def _scan_fwd(plan, u, dl, proj_arr, prm):
    # hs is None when the backward recomputes the boundary states (at its own tile size).
    u = _kernel_u(plan, u)
    y, hs = _forward_walk(plan, u, dl, proj_arr, prm, save_states=saves_states(plan))
    return _sum_orders(plan, y).astype(f32), (u, dl, proj_arr, prm, hs)


def _scan_bwd(plan, res, dy):
    u, dl, proj_arr, prm, hs = res
    if hs is None:
        hs = _forward_walk(plan, u, dl, proj_arr, prm, save_states=True)[1]
    G, K, n, r = proj_arr.shape[0], plan.groups, plan.d_state, plan.rank
    batch = G // K
    dy = dy.astype(u.dtype if plan.y_in_u_dtype else f32)  # the kernels read dy as f32 whatever its dtype
    if plan.merged:  # dy of every order: the merged dy in its source's layout
        dy = _sources(plan, dy)
    dh0 = _split_starts(plan, dy, dl, proj_arr, prm, adjoint=True)
    du, ddl, dBC, dprm = _backward(plan, u, dl, proj_arr, prm, hs, dy, dh0)
    # d(source) (merge_hw plans: d(image)): the orders that share one summed, in the kernel or here.
    du = _sum_orders(plan, du).astype(u.dtype)
    dprm = dprm.reshape(batch, K, *dprm.shape[1:]).sum(0)                         # (K, 2+N+R, Dp)
    if r == 0:
        return du, ddl, dBC.astype(proj_arr.dtype), dprm
    # Low-rank delta: dl = sum_r dts_r W_r, so d dts_r = <ddl, W_r> over channels (dW_r, the sum over positions,
    # came from the kernel). ddl's rows are order-major (`_ddl_row`): per order one (M, Dp) matrix of its
    # M = batch * Lp positions, contracted on the tensor cores without a transpose.
    lp, dp = ddl.shape[1:]
    d_dts = _d_dts(ddl.reshape(K, batch * lp, dp), prm[:, 2 + n:])                    # (K, R, M)
    d_dts = jnp.moveaxis(d_dts.reshape(K, r, batch, lp), 2, 0).reshape(G, r, lp)
    dproj = jnp.concatenate([d_dts, dBC], axis=1).astype(proj_arr.dtype)
    return du, None, dproj, dprm


def _d_dts(ddl, W):
    """(K, M, Dp) d(delta) in its own dtype, (K, R, Dp) f32 dt_proj weight -> (K, R, M) f32: sum_d ddl W_r. f32 ddl:
    at full f32 precision. bf16 ddl (read as it is, not as an f32 copy twice its size): W as two bf16 terms, hi + lo,
    stacked along R, whose results are then added: bf16 products are exact in f32, so this is W to ~16 bits (TF32
    has 10) on the tensor cores at bf16 bandwidth."""
    if ddl.dtype == f32:
        return jnp.einsum("kmd,krd->krm", ddl, W, precision=jax.lax.Precision.HIGHEST)
    hi = W.astype(ddl.dtype)
    lo = (W - hi.astype(f32)).astype(ddl.dtype)
    out = jnp.einsum("kmd,krd->krm", ddl, jnp.concatenate([hi, lo], axis=1), preferred_element_type=f32)
    r = W.shape[1]
    return out[:, :r] + out[:, r:]


scan.defvjp(_scan_fwd, _scan_bwd)


def resolve_direct_store(direct_store: bool | None, interpret, d_state: int) -> bool:
    """None -> the module default for this d_state (see FAST_PLAN_D_STATES); the interpreter always takes the direct
    path (it has no predicated TMA stores)."""
    if interpret is not None:
        return True
    if direct_store is not None:
        return bool(direct_store)
    return DIRECT_STORE and d_state in FAST_PLAN_D_STATES


def plan_tiles(length: int, d_state: int, seq_tile: int | None = None, bwd_seq_tile: int | None = None,
               min_tile: int | None = None, splits: int = 1, max_bwd_tile: int | None = None):
    """(tl_fwd, tl_bwd, padded length): a whole number of both tiles in each of `splits` equal splits.

    `max_bwd_tile` caps the default backward tile (an explicit `bwd_seq_tile` is taken as asked).

    With a `min_tile` (the fused core's), a sequence shorter than two default tiles gets the power-of-two tiles
    (>= min_tile) of which two cover it: the walk is serial, so each padded step costs as much as a real one. With the
    default tiles a 4x4 map (CIFAR's last stage, L 16) was padded to 128 steps and its kernels took 19 of the CIFAR
    train step's 46 ms on the H200, and VMamba-T's 7x7 stage (L 49) walked 128 steps for 49. The plain scan keeps the
    default tiles: its fp32 backward on a two-tile grid at the second channel tile (L 37 and 16, C 192) stopped the
    H200 with CUDA_ERROR_ILLEGAL_ADDRESS (benchmarks/results/gpu_kernel_tests_h200_fast_plan.md), as a one-tile grid
    did before."""
    tl_f, tl_b = _pick_tile(FWD_SEQ_TILE, d_state), _pick_tile(BWD_SEQ_TILE, d_state)
    if min_tile is not None:
        two = max(min_tile, 1 << (max(1, math.ceil(length / 2)) - 1).bit_length())  # the power of two >= L / 2
        tl_f, tl_b = min(tl_f, two), min(tl_b, two)
    if max_bwd_tile is not None:
        tl_b = min(tl_b, max_bwd_tile)
    tl_f, tl_b = seq_tile or tl_f, bwd_seq_tile or tl_b
    step = math.lcm(tl_f, tl_b)
    # At least two sequence tiles: with a one-step grid `emit_pipeline` treats every block as index-invariant and
    # takes another copy path, which crashed (CUDA illegal address) for a 128-channel tile at a nonzero offset
    # (L=37, C=192 in benchmarks/results/gpu_kernel_tests_h100_20261123.md). Padded steps are neutral, so this costs
    # only time.
    # The same holds per split: each split is its own pipeline.
    return tl_f, tl_b, step * splits * max(2, math.ceil(length / (step * splits)))


def resolve_plain_bwd_seq_tile(bwd_seq_tile: int | None, d_state: int, register_states: bool = False) -> int | None:
    """The plain scan's backward tile: None -> on the fast plan's d_states PLAIN_BWD_SEQ_TILE (its states tile in
    SMEM) or PLAIN_BWD_SEQ_TILE_REGISTER_STATES (in registers), else None (plan_tiles' default)."""
    if bwd_seq_tile is None and d_state in FAST_PLAN_D_STATES:
        return PLAIN_BWD_SEQ_TILE_REGISTER_STATES if register_states else PLAIN_BWD_SEQ_TILE
    return bwd_seq_tile


def resolve_fused_max_bwd_tile(register_states: bool, d_state: int) -> int | None:
    """The fused core's cap on its default backward tile (`plan_tiles(max_bwd_tile=)`): with states in registers
    on the fast plan's d_states FUSED_MAX_BWD_SEQ_TILE_REGISTER_STATES, else None (no cap)."""
    return FUSED_MAX_BWD_SEQ_TILE_REGISTER_STATES if register_states and d_state in FAST_PLAN_D_STATES else None


def resolve_dbc_by_xla(dbc_by_xla: bool | None, direct_store: bool) -> bool:
    """None -> the module default (DBC_BY_XLA) where the plan stores straight to GMEM, else off."""
    return bool(DBC_BY_XLA and direct_store if dbc_by_xla is None else dbc_by_xla)


def resolve_cache_steps(cache_steps: bool | None) -> bool:
    """None -> the module default (CACHE_STEPS)."""
    return bool(CACHE_STEPS if cache_steps is None else cache_steps)


def resolve_register_states(register_states: bool | None, d_state: int, fused: bool = False,
                            length: int | None = None) -> bool:
    """None -> the module default (REGISTER_STATES), else on REGISTER_STATES_D_STATES: on for the plain scan, and for
    the fused core at `length` >= FUSED_REGISTER_STATES_MIN_LENGTH."""
    if register_states is not None:
        return bool(register_states)
    if REGISTER_STATES is not None:
        return REGISTER_STATES
    if d_state not in REGISTER_STATES_D_STATES:
        return False
    return not fused or (length is not None and length >= FUSED_REGISTER_STATES_MIN_LENGTH)


def resolve_static_orders(static_orders: bool | None) -> bool:
    """None -> the module default (STATIC_ORDERS)."""
    return bool(STATIC_ORDERS if static_orders is None else static_orders)


def resolve_splits(splits: int | None) -> int:
    """None -> the module default (SPLITS)."""
    splits = SPLITS if splits is None else int(splits)
    if splits < 1:
        raise ValueError(f"splits must be a positive number of splits of the walk, got {splits}")
    return splits


def selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, *,
                   seq_tile: int | None = None, bwd_seq_tile: int | None = None, unroll: int | None = None,
                   bwd_unroll: int | None = None,
                   direct_store: bool | None = None, approx_math: bool | None = None, splits: int | None = None,
                   dbc_by_xla: bool | None = None, cache_steps: bool | None = None,
                   register_states: bool | None = None, interpret=None):
    """Same contract as `reference.selective_scan_reference`: y fp32 (batch, K*D, L); differentiable.

    The keywords are the kernel's tuning knobs (`_Plan`; None: the module defaults) and Pallas' Mosaic GPU
    interpreter parameters (`testing.mosaic_gpu_interpreter()`, for tests on CPU)."""
    batch, channels, length, groups, d_state = check_inputs(u, delta, A, B, C, D, delta_bias)
    per_group = channels // groups
    splits = resolve_splits(splits)
    register_states = resolve_register_states(register_states, d_state)
    bwd_seq_tile = resolve_plain_bwd_seq_tile(bwd_seq_tile, d_state, register_states)
    tl_f, tl_b, lp = plan_tiles(length, d_state, seq_tile, bwd_seq_tile, splits=splits)  # default tiles: plan_tiles
    dp = LANES * math.ceil(per_group / LANES)
    direct_store = resolve_direct_store(direct_store, interpret, d_state)
    unroll = resolve_unroll(unroll, d_state)
    plan = _Plan(groups=groups, source=tuple(range(groups)), reverse=(False,) * groups, rank=0, d_state=d_state,
                 tl_fwd=tl_f, tl_bwd=tl_b, softplus=bool(delta_softplus), unroll=unroll,
                 bwd_unroll=resolve_bwd_unroll(bwd_unroll, unroll, d_state),
                 direct_store=direct_store, approx_math=resolve_approx_math(approx_math, d_state), splits=splits,
                 dbc_by_xla=resolve_dbc_by_xla(dbc_by_xla, direct_store), cache_steps=resolve_cache_steps(cache_steps),
                 register_states=register_states, interpret=interpret)
    check_tma_tiles(plan, jnp.dtype(PROJ_DTYPE).itemsize)

    def seq(x):  # (batch, K*D, L) -> (batch*K, Lp, Dp), channel-minor, zero padded
        x = jnp.swapaxes(x.reshape(batch, groups, per_group, length), 2, 3)
        x = jnp.pad(x, ((0, 0), (0, 0), (0, lp - length), (0, dp - per_group)))
        return x.reshape(batch * groups, lp, dp)

    BC = jnp.concatenate([B, C.astype(B.dtype)], axis=2).astype(PROJ_DTYPE)          # (batch, K, 2N, L)
    BC = jnp.pad(BC, ((0, 0), (0, 0), (0, 0), (0, lp - length))).reshape(batch * groups, 2 * d_state, lp)
    zeros = jnp.zeros((channels,), f32)
    prm = jnp.concatenate([(zeros if D is None else D.astype(f32))[:, None],
                           (zeros if delta_bias is None else delta_bias.astype(f32))[:, None],
                           A.astype(f32)], axis=1)                                   # (K*D, 2+N)
    prm = jnp.swapaxes(prm.reshape(groups, per_group, 2 + d_state), 1, 2)
    prm = jnp.pad(prm, ((0, 0), (0, 0), (0, dp - per_group)))                        # (K, 2+N, Dp)
    y = scan(plan, seq(u), seq(delta), BC, prm)
    y = y.reshape(batch, groups, lp, dp)[:, :, :length, :per_group]
    return jnp.swapaxes(y, 2, 3).reshape(batch, channels, length)
