"""The selective scan as a Mosaic TPU Pallas kernel (`pl.pallas_call`), forward and backward (`custom_vjp`).

Port of axlearn's Mamba-1 kernel (`axlearn/common/ssm_kernels/mamba_kernels.py`) to the official VMamba op's layout
and to the current Pallas API (`pltpu.CompilerParams`, VMEM scratch carries):

* The op's own layout is kept: u and delta are read as (batch, K, D, L) blocks of (channel tile, sequence tile), so the
  wrapper does no transposes of the big tensors; B and C (K/(K*D) of the traffic) are transposed to (batch, K, L, N)
  so a time step reads a (1, N) row. The state h is a (channel tile, N) fp32 value.
* Grid (batch, K, channel tiles, sequence tiles). The sequence axis is last and "arbitrary": TPU grids run in
  lexicographic order, so the state is carried across sequence tiles in a VMEM scratch buffer, zeroed at tile 0.
* The forward also writes the state at the start of every sequence tile (batch, K, tiles, D, N). The backward walks
  the sequence tiles in reverse through its index maps (no flipped copies), recomputes the tile's states from that
  boundary state into VMEM, then steps backward in time carrying dh. Nothing of size (batch, D, N, L) is ever stored.
* Reductions over positions that several grid steps share get extra leading axes that are summed outside the kernel:
  dB and dC per channel tile; dA, dD and d(delta_bias) per batch element (accumulated over sequence tiles in an output
  block whose index map ignores the sequence axis).
* Padding: L is padded to a multiple of the sequence tile with zeros (the padded steps come after every real one, so
  the causal forward never sees them, and dy = 0 there keeps dh = 0 through them); D is padded per group to a multiple
  of the channel tile (padded channels are sliced away).

All math is fp32 whatever the input dtype; gradients are cast back to each input's dtype. On CPU the kernel runs in
Pallas' interpreter (`interpret=True`), which is how CI tests it.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.selective_scan.reference import SOFTPLUS_THRESHOLD, check_inputs

f32 = jnp.float32

DEFAULT_SEQ_TILE = 128      # TPU loops are unrolled: keep the per-tile trip count small.
MAX_CHANNEL_TILE = 256


def is_supported() -> bool:
    return jax.default_backend() == "tpu"


def _softplus_and_grad(x):
    """softplus with the official threshold and its derivative (1 above the threshold, sigmoid below)."""
    xm = jnp.minimum(x, SOFTPLUS_THRESHOLD)
    sp = jnp.where(x > SOFTPLUS_THRESHOLD, x, jnp.log1p(jnp.exp(xm)))
    return sp, jnp.where(x > SOFTPLUS_THRESHOLD, 1.0, jax.nn.sigmoid(xm))


def _channel_tile(d: int) -> int:
    """Largest multiple of 8 dividing d, capped at MAX_CHANNEL_TILE; else d padded to a multiple of 8 tiles of 8k."""
    if d <= MAX_CHANNEL_TILE and d % 8 == 0:
        return d
    for t in range(MAX_CHANNEL_TILE, 7, -8):
        if d % t == 0:
            return t
    return min(MAX_CHANNEL_TILE, 8 * math.ceil(d / 8))


# ------------------------------------------------------------------------------------------------ kernels

def _fwd_kernel(u_ref, dl_ref, a_ref, b_ref, c_ref, d_ref, bias_ref, y_ref, hs_ref, h_scr, *, seq_tile, softplus):
    """One (batch, k, channel tile, sequence tile) step. Blocks: u, dl, y (TD, TL); a (TD, N); b, c (TL, N);
    d, bias (TD, 1); hs (TD, N) receives the state at the start of this tile."""
    @pl.when(pl.program_id(3) == 0)
    def _():
        h_scr[...] = jnp.zeros_like(h_scr)

    hs_ref[...] = h_scr[...]
    A = a_ref[...]
    Dv = d_ref[...]
    bias = bias_ref[...]

    def step(t, h):
        x = dl_ref[:, pl.ds(t, 1)].astype(f32) + bias                    # (TD, 1)
        dt = _softplus_and_grad(x)[0] if softplus else x
        u = u_ref[:, pl.ds(t, 1)].astype(f32)
        b = b_ref[pl.ds(t, 1), :].astype(f32)                              # (1, N)
        c = c_ref[pl.ds(t, 1), :].astype(f32)
        h = jnp.exp(dt * A) * h + (dt * u) * b                             # (TD, N)
        y_ref[:, pl.ds(t, 1)] = jnp.sum(h * c, axis=1, keepdims=True) + Dv * u
        return h

    h_scr[...] = jax.lax.fori_loop(0, seq_tile, step, h_scr[...])


def _bwd_kernel(u_ref, dl_ref, a_ref, b_ref, c_ref, d_ref, bias_ref, hs_ref, dy_ref,
                du_ref, ddl_ref, db_ref, dc_ref, da_ref, dd_ref, dbias_ref,
                dh_scr, states_scr, *, seq_tile, softplus):
    """Reverse walk over sequence tiles (the index maps flip the tile index). states_scr[t + 1] holds h_t of this
    tile, states_scr[0] the state entering it."""
    @pl.when(pl.program_id(3) == 0)
    def _():
        dh_scr[...] = jnp.zeros_like(dh_scr)
        da_ref[...] = jnp.zeros_like(da_ref)
        dd_ref[...] = jnp.zeros_like(dd_ref)
        dbias_ref[...] = jnp.zeros_like(dbias_ref)

    A = a_ref[...]
    Dv = d_ref[...]
    bias = bias_ref[...]

    def inputs(t):
        x = dl_ref[:, pl.ds(t, 1)].astype(f32) + bias
        dt, dsp = _softplus_and_grad(x) if softplus else (x, jnp.ones_like(x))
        return dt, dsp, u_ref[:, pl.ds(t, 1)].astype(f32), b_ref[pl.ds(t, 1), :].astype(f32)

    states_scr[0] = hs_ref[...]

    def recompute(t, h):
        dt, _, u, b = inputs(t)
        h = jnp.exp(dt * A) * h + (dt * u) * b
        states_scr[t + 1] = h
        return h

    jax.lax.fori_loop(0, seq_tile, recompute, hs_ref[...])

    def step(i, carry):
        dh, dA, dD, dbias = carry
        t = seq_tile - 1 - i
        dt, dsp, u, b = inputs(t)
        c = c_ref[pl.ds(t, 1), :].astype(f32)
        dy = dy_ref[:, pl.ds(t, 1)]                                        # (TD, 1) fp32
        h_t = states_scr[t + 1]
        h_prev = states_scr[t]
        dc_ref[pl.ds(t, 1), :] = jnp.sum(h_t * dy, axis=0, keepdims=True)
        dh = dh + dy * c                                                   # adjoint of h_t
        a = jnp.exp(dt * A)
        g = dh * h_prev * a                                                # d/d(dt*A) of the decay term
        dhb = jnp.sum(dh * b, axis=1, keepdims=True)                       # (TD, 1)
        ddt = jnp.sum(g * A, axis=1, keepdims=True) + dhb * u
        db_ref[pl.ds(t, 1), :] = jnp.sum(dh * (dt * u), axis=0, keepdims=True)
        du_ref[:, pl.ds(t, 1)] = dy * Dv + dhb * dt
        draw = ddt * dsp
        ddl_ref[:, pl.ds(t, 1)] = draw
        return dh * a, dA + g * dt, dD + dy * u, dbias + draw

    zeros_col = jnp.zeros(dd_ref.shape, f32)
    dh, dA, dD, dbias = jax.lax.fori_loop(
        0, seq_tile, step, (dh_scr[...], jnp.zeros(da_ref.shape, f32), zeros_col, zeros_col))
    dh_scr[...] = dh
    da_ref[...] += dA
    dd_ref[...] += dD
    dbias_ref[...] += dbias


# ------------------------------------------------------------------------------------------------ pallas calls

def _specs(n_seq, td, tl, n, reverse):
    """BlockSpecs over grid (b, k, d, l); `reverse` maps sequence tile l to n_seq-1-l."""
    s = (lambda l: n_seq - 1 - l) if reverse else (lambda l: l)
    seq = pl.BlockSpec((None, None, td, tl), lambda b, k, d, l: (b, k, d, s(l)))           # (B, K, Dp, Lp)
    a = pl.BlockSpec((None, td, n), lambda b, k, d, l: (k, d, 0))                           # (K, Dp, N)
    bc = pl.BlockSpec((None, None, tl, n), lambda b, k, d, l: (b, k, s(l), 0))              # (B, K, Lp, N)
    col = pl.BlockSpec((None, td, 1), lambda b, k, d, l: (k, d, 0))                         # (K, Dp, 1)
    hs = pl.BlockSpec((None, None, None, td, n), lambda b, k, d, l: (b, k, s(l), d, 0))     # (B, K, nL, Dp, N)
    return seq, a, bc, col, hs


def _compiler_params():
    return pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel", "arbitrary"))


def _forward_call(u, dl, A, Bt, Ct, Dv, bias, *, td, tl, softplus, interpret):
    batch, k, dp, lp = u.shape
    n = A.shape[-1]
    n_seq = lp // tl
    seq, a, bc, col, hs = _specs(n_seq, td, tl, n, reverse=False)
    return pl.pallas_call(
        functools.partial(_fwd_kernel, seq_tile=tl, softplus=softplus),
        grid=(batch, k, dp // td, n_seq),
        in_specs=[seq, seq, a, bc, bc, col, col],
        out_specs=[seq, hs],
        out_shape=[jax.ShapeDtypeStruct(u.shape, f32), jax.ShapeDtypeStruct((batch, k, n_seq, dp, n), f32)],
        scratch_shapes=[pltpu.VMEM((td, n), f32)],
        compiler_params=_compiler_params(),
        interpret=interpret,
    )(u, dl, A, Bt, Ct, Dv, bias)


def _backward_call(u, dl, A, Bt, Ct, Dv, bias, hs_all, dy, *, td, tl, softplus, interpret):
    batch, k, dp, lp = u.shape
    n = A.shape[-1]
    n_seq, n_ch = lp // tl, dp // td
    seq, a, bc, col, hs = _specs(n_seq, td, tl, n, reverse=True)
    rev = lambda l: n_seq - 1 - l  # noqa: E731
    bc_part = pl.BlockSpec((None, None, None, tl, n), lambda b, k, d, l: (b, k, d, rev(l), 0))   # (B, K, nD, Lp, N)
    a_part = pl.BlockSpec((None, None, td, n), lambda b, k, d, l: (b, k, d, 0))                # (B, K, Dp, N)
    col_part = pl.BlockSpec((None, None, td, 1), lambda b, k, d, l: (b, k, d, 0))              # (B, K, Dp, 1)
    return pl.pallas_call(
        functools.partial(_bwd_kernel, seq_tile=tl, softplus=softplus),
        grid=(batch, k, n_ch, n_seq),
        in_specs=[seq, seq, a, bc, bc, col, col, hs, seq],
        out_specs=[seq, seq, bc_part, bc_part, a_part, col_part, col_part],
        out_shape=[
            jax.ShapeDtypeStruct(u.shape, f32), jax.ShapeDtypeStruct(u.shape, f32),
            jax.ShapeDtypeStruct((batch, k, n_ch, lp, n), f32), jax.ShapeDtypeStruct((batch, k, n_ch, lp, n), f32),
            jax.ShapeDtypeStruct((batch, k, dp, n), f32),
            jax.ShapeDtypeStruct((batch, k, dp, 1), f32), jax.ShapeDtypeStruct((batch, k, dp, 1), f32),
        ],
        scratch_shapes=[pltpu.VMEM((td, n), f32), pltpu.VMEM((tl + 1, td, n), f32)],
        compiler_params=_compiler_params(),
        interpret=interpret,
    )(u, dl, A, Bt, Ct, Dv, bias, hs_all, dy)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9, 10))
def _scan(u, dl, A, Bt, Ct, Dv, bias, td, tl, softplus, interpret):
    """Laid-out core: u, dl (B, K, Dp, Lp); A (K, Dp, N); Bt, Ct (B, K, Lp, N); Dv, bias (K, Dp, 1)."""
    return _forward_call(u, dl, A, Bt, Ct, Dv, bias, td=td, tl=tl, softplus=softplus, interpret=interpret)[0]


def _scan_fwd(u, dl, A, Bt, Ct, Dv, bias, td, tl, softplus, interpret):
    y, hs = _forward_call(u, dl, A, Bt, Ct, Dv, bias, td=td, tl=tl, softplus=softplus, interpret=interpret)
    return y, (u, dl, A, Bt, Ct, Dv, bias, hs)


def _scan_bwd(td, tl, softplus, interpret, res, dy):
    u, dl, A, Bt, Ct, Dv, bias, hs = res
    du, ddl, dB, dC, dA, dD, dbias = _backward_call(
        u, dl, A, Bt, Ct, Dv, bias, hs, dy.astype(f32), td=td, tl=tl, softplus=softplus, interpret=interpret)
    return (du.astype(u.dtype), ddl.astype(dl.dtype), dA.sum(0).astype(A.dtype),
            dB.sum(2).astype(Bt.dtype), dC.sum(2).astype(Ct.dtype),
            dD.sum(0).astype(Dv.dtype), dbias.sum(0).astype(bias.dtype))


_scan.defvjp(_scan_fwd, _scan_bwd)


def selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, *,
                   interpret=None, seq_tile: int | None = None, channel_tile: int | None = None):
    """Same contract as `reference.selective_scan_reference` (y fp32 (batch, K*D, L)); differentiable.

    `interpret` (default: True off-TPU; or a `pltpu.InterpretParams()`) runs Pallas' interpreter, so asking for this
    kernel by name works on any backend, slowly; "auto" picks it only where `is_supported()`.
    """
    if interpret is None:
        interpret = not is_supported()
    batch, channels, length, groups, d_state = check_inputs(u, delta, A, B, C, D, delta_bias)
    per_group = channels // groups
    tl = seq_tile or DEFAULT_SEQ_TILE
    td = channel_tile or _channel_tile(per_group)
    lp = tl * math.ceil(length / tl)
    dp = td * math.ceil(per_group / td)

    def seq(x):  # (batch, K*D, L) -> (batch, K, Dp, Lp), zero padded
        x = x.reshape(batch, groups, per_group, length)
        return jnp.pad(x, ((0, 0), (0, 0), (0, dp - per_group), (0, lp - length)))

    def per_channel(x, cols):  # (K*D, cols) -> (K, Dp, cols)
        x = x.astype(f32).reshape(groups, per_group, cols)
        return jnp.pad(x, ((0, 0), (0, dp - per_group), (0, 0)))

    def bc(x):  # (batch, K, N, L) -> (batch, K, Lp, N)
        return jnp.pad(jnp.swapaxes(x, 2, 3), ((0, 0), (0, 0), (0, lp - length), (0, 0)))

    zeros = jnp.zeros((channels,), f32)
    Dv = per_channel((zeros if D is None else D)[:, None], 1)
    bias = per_channel((zeros if delta_bias is None else delta_bias)[:, None], 1)
    y = _scan(seq(u), seq(delta), per_channel(A, d_state), bc(B), bc(C), Dv, bias,
              td, tl, bool(delta_softplus), interpret)
    return y[:, :, :per_group, :length].reshape(batch, channels, length)
