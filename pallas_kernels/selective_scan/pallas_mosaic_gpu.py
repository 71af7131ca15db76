"""The selective scan as a Mosaic GPU Pallas kernel (Hopper+): `plgpu.kernel` + `plgpu.emit_pipeline`, custom_vjp.

Layout (the one that lowered first time on an H100, jax_notes.md §2.6): channels are the minor axis and each of the
128 threads of a warpgroup owns one channel, so every in-kernel value is a (128,) fp32 vector and the d_state axis is
statically unrolled into N such vectors. One CUDA block = one (batch, group) sequence x one 128-channel tile; it walks
the whole sequence, `emit_pipeline` streaming (TL, 128) tiles of u and delta GMEM -> SMEM by TMA (double buffered)
with the state as the pipeline carry. B and C are read as per-step scalars from SMEM (shared by the block's channels).

* The op's layout (batch, K*D, L) is channel-major, so the wrapper transposes u, delta (and dy, y, du, ddelta) to
  (batch*K, L, D) in XLA, padding D per group to a multiple of 128 and L to a multiple of the sequence tile with
  zeros (neutral: padded steps come after the real ones, and dy = 0 there keeps dh = 0).
* delta_bias, softplus with the official threshold (x > 20 passes through) and the D skip are fused in the kernel.
* Forward for training also writes the state at the start of every sequence tile (batch*K, tiles, N, D).
* Backward walks the tiles in reverse (reversed index maps), recomputes the tile's states from its boundary state
  into SMEM, and steps back in time carrying dh. dA, dD and d(delta_bias) are per-channel sums carried in registers
  and written once per block (then summed over batch in XLA). dB and dC are sums over the block's 128 channels: each
  step stores its N per-channel products as SMEM rows and once per tile the rows are loaded in the WGMMA register
  layout and row-summed (`.sum(axis=1)`, the flash-attention row-sum path), giving per-channel-tile partials that
  XLA sums over tiles.

No CPU interpreter exists for Mosaic GPU: the CPU test suite checks that this module is not picked off-GPU; the kernel
itself is checked against the reference by `benchmarks/gpu_kernel_tests.py` on an H100 (output committed under
benchmarks/results/).
"""

from __future__ import annotations

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
MAX_CONCURRENT_STEPS = 2
# Each thread reads and writes only its own lane of SMEM, except the dB/dC row sums, which are fenced explicitly
# with commit_smem(); the pipeline itself commits SMEM before every TMA store and fetch. So Pallas' conservative
# per-access barriers (two bar.sync per SMEM store) can be turned off. VMAMBA_MGPU_AUTO_BARRIERS=1 turns them back on
# (a debugging switch: it must not change results, only speed).
UNSAFE_NO_AUTO_BARRIERS = os.environ.get("VMAMBA_MGPU_AUTO_BARRIERS", "0") != "1"


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


def _zeros():
    """A zero (128,) vector in the strided layout that SMEM row loads produce (loop carries must keep one layout)."""
    return plgpu.layout_cast(jnp.zeros((LANES,), f32), plgpu.Layout.WG_STRIDED((LANES,), vec_size=1))


def _pick_tile(table, d_state):
    return table.get(d_state, table[16] if d_state > 1 else table[1])


def _softplus(x, softplus):
    """Returns (dt, d dt / d x) with the official threshold; softplus' derivative is sigmoid = 1 - exp(-softplus)."""
    if not softplus:
        return x, None
    xm = jnp.minimum(x, SOFTPLUS_THRESHOLD)
    sp = jnp.log(1.0 + jnp.exp(xm))
    big = x > SOFTPLUS_THRESHOLD
    return jnp.where(big, x, sp), jnp.where(big, 1.0, 1.0 - jnp.exp(-sp))


class _BC:
    """B and C travel as one array BC (G, 2N, L) (rows [B_0..B_{N-1}, C_0..C_{N-1}]): one TMA copy per tile, and
    big enough for TMA's rules (16-byte minor dim, a multiple of 128 bytes per copy). The SMEM tile is (2N, TL) when
    2N is small, (TL, 2N) when a row of 2N values is >= 16 bytes; kernels read per-step scalars from it."""

    def __init__(self, d_state, itemsize):
        self.n = d_state
        self.time_minor = 2 * d_state * itemsize < 16

    def gmem_view(self, x):  # x: (G, 2N, L)
        return x if self.time_minor else jnp.swapaxes(x, 1, 2)

    def spec(self, tl, chunk):
        if self.time_minor:
            return pl.BlockSpec((2 * self.n, tl), lambda i: (0, chunk(i)))
        return pl.BlockSpec((tl, 2 * self.n), lambda i: (chunk(i), 0))

    def _read(self, ref, row, t):
        return (ref[row, t] if self.time_minor else ref[t, row]).astype(f32)

    def b(self, ref, j, t):
        return self._read(ref, j, t)

    def c(self, ref, j, t):
        return self._read(ref, self.n + j, t)


# ------------------------------------------------------------------------------------------------ forward

def _forward(u, dl, BC, prm, *, groups, tl, softplus, save_states):
    """u, dl (G, Lp, Dp); BC (G, 2N, Lp); prm (K, 2+N, Dp) f32 rows [D, bias, A_0..].

    Returns y (G, Lp, Dp) f32 and, if save_states, hs (G, Lp/tl, N, Dp) f32 (state entering each tile)."""
    G, lp, dp = u.shape
    n = prm.shape[1] - 2
    n_seq, n_ch = lp // tl, dp // LANES
    bc = _BC(n, BC.dtype.itemsize)
    BC = bc.gmem_view(BC)
    fwd = lambda i: i  # noqa: E731

    out_shapes = [jax.ShapeDtypeStruct((G, lp, dp), f32)]
    if save_states:
        out_shapes.append(jax.ShapeDtypeStruct((G, n_seq, n, dp), f32))

    def body(u_ref, dl_ref, bc_ref, p_ref, *rest):
        outs, (p_smem, bar) = rest[:len(out_shapes)], rest[len(out_shapes):]
        g = jax.lax.axis_index("g")
        d0 = pl.multiple_of(jax.lax.axis_index("d") * LANES, LANES)
        plgpu.copy_gmem_to_smem(p_ref.at[g % groups, :, pl.ds(d0, LANES)], p_smem, bar)
        plgpu.barrier_wait(bar)
        Dv, bias = p_smem[0], p_smem[1]
        A = [p_smem[2 + j] for j in range(n)]

        def chunk(idx, u_s, dl_s, bc_s, *outs_and_carry):
            *o_s, h = outs_and_carry
            if save_states:
                for j in range(n):
                    o_s[1][j] = h[j]

            def step(t, h):
                dt, _ = _softplus(dl_s[t].astype(f32) + bias, softplus)
                uu = u_s[t].astype(f32)
                dtu = dt * uu
                y = Dv * uu
                h_new = []
                for j in range(n):
                    hj = jnp.exp(dt * A[j]) * h[j] + dtu * bc.b(bc_s, j, t)
                    y = y + hj * bc.c(bc_s, j, t)
                    h_new.append(hj)
                o_s[0][t] = y
                return tuple(h_new)

            return jax.lax.fori_loop(0, tl, step, h)

        seq = pl.BlockSpec((tl, LANES), lambda i: (i, 0))
        out_specs = [seq] + ([pl.BlockSpec((None, n, LANES), lambda i: (i, 0, 0))] if save_states else [])
        gmem_outs = [outs[0].at[g, :, pl.ds(d0, LANES)]]
        if save_states:
            gmem_outs.append(outs[1].at[g, :, :, pl.ds(d0, LANES)])
        plgpu.emit_pipeline(
            chunk, grid=(n_seq,),
            in_specs=[seq, seq, bc.spec(tl, fwd)],
            out_specs=out_specs,
            max_concurrent_steps=MAX_CONCURRENT_STEPS,
            init_carry=tuple(_zeros() for _ in range(n)),
        )(u_ref.at[g, :, pl.ds(d0, LANES)], dl_ref.at[g, :, pl.ds(d0, LANES)], bc_ref.at[g],
          *gmem_outs)

    outs = plgpu.kernel(
        body, out_type=out_shapes, grid=(G, n_ch), grid_names=("g", "d"),
        scratch_types=[plgpu.SMEM((2 + n, LANES), f32), plgpu.Barrier(num_arrivals=1)],
        compiler_params=plgpu.CompilerParams(unsafe_no_auto_barriers=UNSAFE_NO_AUTO_BARRIERS),
    )(u, dl, BC, prm)
    return tuple(outs) if save_states else (outs[0], None)


# ------------------------------------------------------------------------------------------------ backward

def _backward(u, dl, BC, prm, hs, dy, *, groups, tl, softplus):
    """Returns du, ddl (G, Lp, Dp) in u/dl dtypes; dBC (G, 2N, Lp) f32 (summed over channel tiles);
    dprm (G, 2+N, Dp) f32 per-sequence partials [dD, dbias, dA_0..]."""
    G, lp, dp = u.shape
    n = prm.shape[1] - 2
    n_seq, n_ch = lp // tl, dp // LANES
    bc = _BC(n, BC.dtype.itemsize)
    BC = bc.gmem_view(BC)
    rows = tl * n                                   # dB (or dC) rows per tile: t*N + j
    rows_pad = ROWS * math.ceil(2 * rows / ROWS)    # dB rows then dC rows, padded to the WGMMA row tile
    rev = lambda i: n_seq - 1 - i  # noqa: E731

    out_shapes = [
        jax.ShapeDtypeStruct((G, lp, dp), u.dtype),
        jax.ShapeDtypeStruct((G, lp, dp), dl.dtype),
        jax.ShapeDtypeStruct((G, n_ch, n_seq, rows_pad), f32),     # per tile: [dB rows | dC rows | padding]
        jax.ShapeDtypeStruct((G, 2 + n, dp), f32),
    ]

    def body(u_ref, dl_ref, bc_ref, p_ref, hs_ref, dy_ref, du_ref, ddl_ref, dbc_ref, dp_ref,
             p_smem, bar, st_smem, red_smem):
        g = jax.lax.axis_index("g")
        dti = jax.lax.axis_index("d")
        d0 = pl.multiple_of(dti * LANES, LANES)
        plgpu.copy_gmem_to_smem(p_ref.at[g % groups, :, pl.ds(d0, LANES)], p_smem, bar)
        plgpu.barrier_wait(bar)
        Dv, bias = p_smem[0], p_smem[1]
        A = [p_smem[2 + j] for j in range(n)]

        def chunk(idx, u_s, dl_s, bc_s, hs_s, dy_s, du_s, ddl_s, dbc_s, carry):
            dh, dA, dD, dbias = carry

            def inputs(t):
                dt, dsp = _softplus(dl_s[t].astype(f32) + bias, softplus)
                return dt, dsp, u_s[t].astype(f32)

            for j in range(n):
                st_smem[0, j] = hs_s[j]

            def recompute(t, h):
                dt, _, uu = inputs(t)
                dtu = dt * uu
                h_new = []
                for j in range(n):
                    hj = jnp.exp(dt * A[j]) * h[j] + dtu * bc.b(bc_s, j, t)
                    st_smem[t + 1, j] = hj
                    h_new.append(hj)
                return tuple(h_new)

            jax.lax.fori_loop(0, tl, recompute, tuple(hs_s[j] for j in range(n)))

            def step(i, carry):
                dh, dA, dD, dbias = carry
                t = tl - 1 - i
                dt, dsp, uu = inputs(t)
                dy = dy_s[t]
                dtu = dt * uu
                ddt = _zeros()
                dhb = _zeros()
                dh_new, dA_new = [], []
                for j in range(n):
                    b = bc.b(bc_s, j, t)
                    c = bc.c(bc_s, j, t)
                    red_smem[rows + t * n + j] = st_smem[t + 1, j] * dy          # dC row
                    dhj = dh[j] + dy * c                                          # adjoint of h_t
                    a = jnp.exp(dt * A[j])
                    gj = dhj * st_smem[t, j] * a
                    ddt = ddt + gj * A[j]
                    dhb = dhb + dhj * b
                    red_smem[t * n + j] = dhj * dtu                               # dB row
                    dA_new.append(dA[j] + gj * dt)
                    dh_new.append(dhj * a)
                ddt = ddt + dhb * uu
                draw = ddt * dsp if softplus else ddt
                du_s[t] = (dy * Dv + dhb * dt).astype(du_s.dtype)
                ddl_s[t] = draw.astype(ddl_s.dtype)
                return tuple(dh_new), tuple(dA_new), dD + dy * uu, dbias + draw

            carry = jax.lax.fori_loop(0, tl, step, (dh, dA, dD, dbias))
            plgpu.commit_smem()  # the row sums read rows other threads wrote
            dbc_s[...] = plgpu.load(red_smem, (), layout=plgpu.Layout.WGMMA, optimized=False).sum(axis=1)
            return carry

        seq = pl.BlockSpec((tl, LANES), lambda i: (rev(i), 0))
        zero = _zeros()
        init = (tuple(zero for _ in range(n)), tuple(zero for _ in range(n)), zero, zero)
        dh, dA, dD, dbias = plgpu.emit_pipeline(
            chunk, grid=(n_seq,),
            in_specs=[seq, seq, bc.spec(tl, rev),
                      pl.BlockSpec((None, n, LANES), lambda i: (rev(i), 0, 0)), seq],
            out_specs=[seq, seq, pl.BlockSpec((None, rows_pad), lambda i: (rev(i), 0))],
            max_concurrent_steps=MAX_CONCURRENT_STEPS,
            init_carry=init,
        )(u_ref.at[g, :, pl.ds(d0, LANES)], dl_ref.at[g, :, pl.ds(d0, LANES)], bc_ref.at[g],
          hs_ref.at[g, :, :, pl.ds(d0, LANES)], dy_ref.at[g, :, pl.ds(d0, LANES)],
          du_ref.at[g, :, pl.ds(d0, LANES)], ddl_ref.at[g, :, pl.ds(d0, LANES)], dbc_ref.at[g, dti])

        # Per-channel parameter grads of this (sequence, channel tile): written once.
        p_smem[0] = dD
        p_smem[1] = dbias
        for j in range(n):
            p_smem[2 + j] = dA[j]
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(p_smem, dp_ref.at[g, :, pl.ds(d0, LANES)])
        plgpu.wait_smem_to_gmem(0)

    du, ddl, dbc, dprm = plgpu.kernel(
        body, out_type=out_shapes, grid=(G, n_ch), grid_names=("g", "d"),
        scratch_types=[plgpu.SMEM((2 + n, LANES), f32), plgpu.Barrier(num_arrivals=1),
                        plgpu.SMEM((tl + 1, n, LANES), f32), plgpu.SMEM((rows_pad, LANES), f32)],
        compiler_params=plgpu.CompilerParams(unsafe_no_auto_barriers=UNSAFE_NO_AUTO_BARRIERS),
    )(u, dl, BC, prm, hs, dy)
    dbc = dbc.sum(1)[..., :2 * rows].reshape(G, n_seq, 2, tl, n)      # (G, tiles, {B,C}, TL, N)
    dBC = jnp.moveaxis(dbc, (2, 4), (1, 2)).reshape(G, 2 * n, lp)                  # rows [B_0.., C_0..]
    return du, ddl, dBC, dprm


# ------------------------------------------------------------------------------------------------ custom_vjp core

@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _scan(u, dl, BC, prm, groups, tl_fwd, tl_bwd, softplus):
    """u, dl (G, Lp, Dp); BC (G, 2N, Lp); prm (K, 2+N, Dp) f32. Returns y (G, Lp, Dp) f32."""
    return _forward(u, dl, BC, prm, groups=groups, tl=tl_fwd, softplus=softplus, save_states=False)[0]


def _scan_fwd(u, dl, BC, prm, groups, tl_fwd, tl_bwd, softplus):
    # The training forward saves boundary states at the backward's tile size.
    y, hs = _forward(u, dl, BC, prm, groups=groups, tl=tl_bwd, softplus=softplus, save_states=True)
    return y, (u, dl, BC, prm, hs)


def _scan_bwd(groups, tl_fwd, tl_bwd, softplus, res, dy):
    u, dl, BC, prm, hs = res
    du, ddl, dBC, dprm = _backward(u, dl, BC, prm, hs, dy.astype(f32), groups=groups, tl=tl_bwd,
                                   softplus=softplus)
    G = u.shape[0]
    dprm = dprm.reshape(G // groups, groups, *dprm.shape[1:]).sum(0)
    return du, ddl, dBC.astype(BC.dtype), dprm


_scan.defvjp(_scan_fwd, _scan_bwd)


def selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, *,
                   seq_tile: int | None = None, bwd_seq_tile: int | None = None):
    """Same contract as `reference.selective_scan_reference`: y fp32 (batch, K*D, L); differentiable."""
    batch, channels, length, groups, d_state = check_inputs(u, delta, A, B, C, D, delta_bias)
    per_group = channels // groups
    tl_f = seq_tile or _pick_tile(FWD_SEQ_TILE, d_state)
    tl_b = bwd_seq_tile or _pick_tile(BWD_SEQ_TILE, d_state)
    step = math.lcm(tl_f, tl_b)
    # At least two sequence tiles: with a one-step grid `emit_pipeline` treats every block as index-invariant and
    # takes another copy path, which crashed (CUDA illegal address) for a 128-channel tile at a nonzero offset
    # (L=37, C=192 in benchmarks/results/gpu_kernel_tests_h100.md). Padded steps are neutral, so this costs only time.
    lp = step * max(2, math.ceil(length / step))
    dp = LANES * math.ceil(per_group / LANES)

    def seq(x):  # (batch, K*D, L) -> (batch*K, Lp, Dp), channel-minor, zero padded
        x = jnp.swapaxes(x.reshape(batch, groups, per_group, length), 2, 3)
        x = jnp.pad(x, ((0, 0), (0, 0), (0, lp - length), (0, dp - per_group)))
        return x.reshape(batch * groups, lp, dp)

    BC = jnp.concatenate([B, C.astype(B.dtype)], axis=2)                             # (batch, K, 2N, L)
    BC = jnp.pad(BC, ((0, 0), (0, 0), (0, 0), (0, lp - length))).reshape(batch * groups, 2 * d_state, lp)
    zeros = jnp.zeros((channels,), f32)
    prm = jnp.concatenate([(zeros if D is None else D.astype(f32))[:, None],
                           (zeros if delta_bias is None else delta_bias.astype(f32))[:, None],
                           A.astype(f32)], axis=1)                                   # (K*D, 2+N)
    prm = jnp.swapaxes(prm.reshape(groups, per_group, 2 + d_state), 1, 2)
    prm = jnp.pad(prm, ((0, 0), (0, 0), (0, dp - per_group)))                        # (K, 2+N, Dp)
    y = _scan(seq(u), seq(delta), BC, prm, groups, tl_f, tl_b, bool(delta_softplus))
    y = y.reshape(batch, groups, lp, dp)[:, :, :length, :per_group]
    return jnp.swapaxes(y, 2, 3).reshape(batch, channels, length)
