"""The fused SS2D core as a Mosaic TPU Pallas kernel (`pl.pallas_call`), forward and backward (`custom_vjp`).

Contract: `reference.ss2d_core_reference` (cross-scan, x_proj / dt_proj, selective scan, cross-merge), computed as one
kernel per image with nothing of size (K, L, D) ever written to HBM:

* Grid (batch,), "parallel". A step holds its image x (L, D) (L = H*W, row-major, channel-last, a free reshape of the
  NHWC activation), every SSM parameter and the merged output y (L, D) fp32 in VMEM. Stage 1 of VMamba-T is
  3136 x 96 fp32 = 1.2 MB per (L, D) buffer, well inside VMEM.
* For each direction k the projections run on the MXU over the whole image (a position's projection does not depend
  on the scan order): B_k, C_k = W_B,C x^T (N, L) and delta_k = softplus(dt_proj(x_proj_dt(x)) + bias) (L, D), the
  low-rank dts contracted inside the kernel.
* The scan walks the image in the k-th order by *indexing*: step t of direction k reads and writes pixel
  p = order_k(t) (row-major, column-major, and both reversed: `_position`), so there are no cross-scan copies and
  the four outputs are merged by accumulating into y in place. The state h is (N, D): D on lanes, d_state on sublanes.
* Training: the forward also writes the state entering every chunk of `H` scan steps (H divides L for every order).
  The backward walks the chunks in reverse, recomputes a chunk's states from its boundary state into VMEM, steps
  back in time carrying dh, and then runs the projections' backward on the MXU; parameter gradients are per image
  (a leading batch axis summed outside), dx is accumulated over the four directions in place.

Size limit: a grid step holds whole images, about 4 (forward) and 8 (backward) fp32 buffers of L x D plus the
chunk states: ~10 MB at VMamba-T's 224 px stage 1, but ~25 MB *per buffer* at 1024 px. So the core is for
classification-sized inputs; the reference composition (or a spatially tiled kernel, not written) serves the rest.

All math is fp32 whatever the input dtype (bf16 activations are cast on load, dx is cast back). On CPU the kernel runs
in Pallas' interpreter (`interpret=True`), which is how CI tests it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.selective_scan.pallas_mosaic_tpu import _softplus_and_grad
from pallas_kernels.ss2d.reference import ALL_DIRECTIONS

f32 = jnp.float32


def is_supported() -> bool:
    return jax.default_backend() == "tpu"


def _dot(a, b, contract):
    """fp32 contraction of a and b over the given (a_dim, b_dim) axes, on the MXU."""
    return jax.lax.dot_general(a, b, ((contract[0], contract[1]), ((), ())), preferred_element_type=f32,
                               precision=jax.lax.Precision.HIGHEST)


def _position(k: int, t, h: int, w: int):
    """Pixel (row-major index) visited at step t of scan order k (reference.py's table)."""
    if k >= 2:
        t = h * w - 1 - t
    if k % 2 == 1:  # column-major: t = col * H + row
        return (t % h) * w + t // h
    return t


def _projections(X, wx, wdt, bias, r, n):
    """delta (softplus'd), its softplus derivative (L, D), B and C (N, L), and the low-rank dts (L, R)."""
    dt_low = _dot(X, wx[:r], ((1,), (1,)))                         # (L, R)
    delta, dsp = _softplus_and_grad(_dot(dt_low, wdt, ((1,), (1,))) + bias)
    Bt = _dot(wx[r:r + n], X, ((1,), (1,)))                        # (N, L)
    Ct = _dot(wx[r + n:], X, ((1,), (1,)))
    return delta, dsp, Bt, Ct, dt_low


def _advance(state, p, A, x_ref, dl_s, b_s):
    """One scan step at pixel p: h = exp(dt A) h + dt u B. Returns (h (N, D), dt (1, D), u (1, D))."""
    dt = dl_s[pl.ds(p, 1), :]
    u = x_ref[pl.ds(p, 1), :].astype(f32)
    return jnp.exp(dt * A) * state + (dt * u) * b_s[:, pl.ds(p, 1)], dt, u


# ------------------------------------------------------------------------------------------------ kernels

def _fwd_kernel(x_ref, wx_ref, wdt_ref, bias_ref, a_ref, d_ref, y_ref, *rest, h, w, r, directions, save_states):
    """Blocks: x, y (L, D); wx (k, R+2N, D); wdt (k, D, R); bias, d (k, 1, D); a (k, N, D), for the k = len(directions)
    scan orders `directions`; hs (k, L/H, N, D) if save_states: the state entering each chunk of H steps."""
    hs_ref, dl_s, b_s, c_s = rest if save_states else (None, *rest)
    n = a_ref.shape[1]
    X = x_ref[...].astype(f32)
    y_ref[...] = jnp.zeros_like(y_ref)
    for j, k in enumerate(directions):  # j: this call's parameter slot, k: the scan order
        delta, _, Bt, Ct, _ = _projections(X, wx_ref[j], wdt_ref[j], bias_ref[j], r, n)
        dl_s[...], b_s[...], c_s[...] = delta, Bt, Ct
        A, Dk = a_ref[j], d_ref[j]

        def chunk(c, state, j=j, k=k, A=A, Dk=Dk):
            if save_states:
                hs_ref[j, c] = state

            def step(i, state):
                p = _position(k, c * h + i, h, w)
                state, _, u = _advance(state, p, A, x_ref, dl_s, b_s)
                y_ref[pl.ds(p, 1), :] += jnp.sum(state * c_s[:, pl.ds(p, 1)], axis=0, keepdims=True) + Dk * u
                return state

            return jax.lax.fori_loop(0, h, step, state)

        jax.lax.fori_loop(0, w, chunk, jnp.zeros((n, X.shape[1]), f32))


def _bwd_kernel(x_ref, wx_ref, wdt_ref, bias_ref, a_ref, d_ref, hs_ref, dy_ref,
                dx_ref, dwx_ref, dwdt_ref, dbias_ref, da_ref, dd_ref,
                dl_s, dsp_s, b_s, c_s, ddl_s, db_s, dc_s, st_s, *, h, w, r, directions):
    """Reverse walk of each direction's chunks (W chunks of H steps); st_s[i + 1] holds the chunk's i-th state."""
    n, d = a_ref.shape[1], a_ref.shape[2]
    X = x_ref[...].astype(f32)
    dx_ref[...] = jnp.zeros_like(dx_ref)
    for j, k in enumerate(directions):
        wx, wdt = wx_ref[j], wdt_ref[j]
        delta, dsp, Bt, Ct, dt_low = _projections(X, wx, wdt, bias_ref[j], r, n)
        dl_s[...], dsp_s[...], b_s[...], c_s[...] = delta, dsp, Bt, Ct
        A, Dk = a_ref[j], d_ref[j]

        def chunk(i_chunk, carry, j=j, k=k, A=A, Dk=Dk):
            c = w - 1 - i_chunk
            st_s[0] = hs_ref[j, c]

            def recompute(i, state):
                state = _advance(state, _position(k, c * h + i, h, w), A, x_ref, dl_s, b_s)[0]
                st_s[i + 1] = state
                return state

            jax.lax.fori_loop(0, h, recompute, st_s[0])

            def step(i, carry):
                dh, dA, dD = carry
                ti = h - 1 - i
                p = _position(k, c * h + ti, h, w)
                dt = dl_s[pl.ds(p, 1), :]                                      # (1, D)
                u = x_ref[pl.ds(p, 1), :].astype(f32)
                b = b_s[:, pl.ds(p, 1)]                                        # (N, 1)
                dy = dy_ref[pl.ds(p, 1), :]                                    # (1, D)
                dc_s[:, pl.ds(p, 1)] = jnp.sum(st_s[ti + 1] * dy, axis=1, keepdims=True)
                dh = dh + dy * c_s[:, pl.ds(p, 1)]                            # adjoint of this step's state
                a = jnp.exp(dt * A)
                g = dh * st_s[ti] * a                                          # d/d(dt*A) of the decay term
                dhb = jnp.sum(dh * b, axis=0, keepdims=True)                   # (1, D)
                db_s[:, pl.ds(p, 1)] = jnp.sum(dh * (dt * u), axis=1, keepdims=True)
                dx_ref[pl.ds(p, 1), :] += dy * Dk + dhb * dt
                ddl_s[pl.ds(p, 1), :] = (jnp.sum(g * A, axis=0, keepdims=True) + dhb * u) * dsp_s[pl.ds(p, 1), :]
                return dh * a, dA + g * dt, dD + dy * u

            return jax.lax.fori_loop(0, h, step, carry)

        zero_nd, zero_d = jnp.zeros((n, d), f32), jnp.zeros((1, d), f32)
        _, dA, dD = jax.lax.fori_loop(0, w, chunk, (zero_nd, zero_nd, zero_d))
        da_ref[j], dd_ref[j] = dA, dD

        # The projections' backward, over the whole image on the MXU.
        ddl, db, dc = ddl_s[...], db_s[...], dc_s[...]                        # (L, D), (N, L), (N, L)
        dbias_ref[j] = jnp.sum(ddl, axis=0, keepdims=True)
        d_low = _dot(ddl, wdt, ((1,), (0,)))                                   # (L, R)
        dwdt_ref[j] = _dot(ddl, dt_low, ((0,), (0,)))                          # (D, R)
        dx_ref[...] += (_dot(d_low, wx[:r], ((1,), (0,))) + _dot(db, wx[r:r + n], ((0,), (0,)))
                        + _dot(dc, wx[r + n:], ((0,), (0,))))
        dwx_ref[j] = jnp.concatenate(
            [_dot(d_low, X, ((0,), (0,))), _dot(db, X, ((1,), (0,))), _dot(dc, X, ((1,), (0,)))], axis=0)


# ------------------------------------------------------------------------------------------------ pallas calls

def _full(shape):
    """A BlockSpec that gives every grid step the whole (unbatched) array."""
    return pl.BlockSpec(shape, lambda b: (0,) * len(shape))


def _per_image(shape):
    """A BlockSpec over (batch, *shape) that gives grid step b its own slice."""
    return pl.BlockSpec((None, *shape), lambda b: (b,) + (0,) * len(shape))


def _params_specs(wx, wdt, bias, A, Dk):
    return [_full(t.shape) for t in (wx, wdt, bias, A, Dk)]


def _forward_call(x, wx, wdt, bias, A, Dk, *, h, w, directions, save_states, interpret):
    batch, L, d = x.shape
    k, n, r = A.shape[0], A.shape[1], wdt.shape[2]
    out_specs = [_per_image((L, d))]
    out_shape = [jax.ShapeDtypeStruct((batch, L, d), f32)]
    if save_states:
        out_specs.append(_per_image((k, w, n, d)))
        out_shape.append(jax.ShapeDtypeStruct((batch, k, w, n, d), f32))
    outs = pl.pallas_call(
        functools.partial(_fwd_kernel, h=h, w=w, r=r, directions=directions, save_states=save_states),
        grid=(batch,),
        in_specs=[_per_image((L, d))] + _params_specs(wx, wdt, bias, A, Dk),
        out_specs=out_specs,
        out_shape=out_shape,
        scratch_shapes=[pltpu.VMEM((L, d), f32), pltpu.VMEM((n, L), f32), pltpu.VMEM((n, L), f32)],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",)),
        interpret=interpret,
    )(x, wx, wdt, bias, A, Dk)
    return outs if save_states else (outs[0], None)


def _backward_call(x, wx, wdt, bias, A, Dk, hs, dy, *, h, w, directions, interpret):
    batch, L, d = x.shape
    n, r = A.shape[1], wdt.shape[2]
    per_image_grads = [t.shape for t in (wx, wdt, bias, A, Dk)]
    return pl.pallas_call(
        functools.partial(_bwd_kernel, h=h, w=w, r=r, directions=directions),
        grid=(batch,),
        in_specs=([_per_image((L, d))] + _params_specs(wx, wdt, bias, A, Dk)
                  + [_per_image(hs.shape[1:]), _per_image((L, d))]),
        out_specs=[_per_image((L, d))] + [_per_image(s) for s in per_image_grads],
        out_shape=([jax.ShapeDtypeStruct((batch, L, d), f32)]
                   + [jax.ShapeDtypeStruct((batch, *s), f32) for s in per_image_grads]),
        scratch_shapes=[pltpu.VMEM((L, d), f32), pltpu.VMEM((L, d), f32),       # delta, softplus'
                        pltpu.VMEM((n, L), f32), pltpu.VMEM((n, L), f32),       # B, C
                        pltpu.VMEM((L, d), f32),                                # d delta (pre-softplus)
                        pltpu.VMEM((n, L), f32), pltpu.VMEM((n, L), f32),       # dB, dC
                        pltpu.VMEM((h + 1, n, d), f32)],                        # a chunk's states
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",)),
        interpret=interpret,
    )(x, wx, wdt, bias, A, Dk, hs, dy)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9))
def _core(x, wx, wdt, bias, A, Dk, h, w, directions, interpret):
    """Laid-out core: x (B, L, D); wx (k, R+2N, D); wdt (k, D, R); bias, Dk (k, 1, D); A (k, N, D). y (B, L, D) f32."""
    return _forward_call(x, wx, wdt, bias, A, Dk, h=h, w=w, directions=directions, save_states=False,
                         interpret=interpret)[0]


def _core_fwd(x, wx, wdt, bias, A, Dk, h, w, directions, interpret):
    y, hs = _forward_call(x, wx, wdt, bias, A, Dk, h=h, w=w, directions=directions, save_states=True,
                          interpret=interpret)
    return y, (x, wx, wdt, bias, A, Dk, hs)


def _core_bwd(h, w, directions, interpret, res, dy):
    x, wx, wdt, bias, A, Dk, hs = res
    dx, *dparams = _backward_call(x, wx, wdt, bias, A, Dk, hs, dy.astype(f32), h=h, w=w, directions=directions,
                                  interpret=interpret)
    return (dx.astype(x.dtype), *(g.sum(0).astype(p.dtype) for g, p in zip(dparams, (wx, wdt, bias, A, Dk))))


_core.defvjp(_core_fwd, _core_bwd)


def ss2d_core(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, *,
              directions: tuple[int, ...] = ALL_DIRECTIONS, interpret=None):
    """Same contract as `reference.ss2d_core_reference`: x (B, H, W, D) -> y (B, H, W, D) fp32; differentiable.
    `directions`: the scan orders the parameters belong to (default all four; a subset gives that part of the sum).

    `interpret` (default: True off-TPU) runs Pallas' interpreter, so asking for this core by name works on any
    backend, slowly; "auto" picks it only where `is_supported()`.
    """
    if interpret is None:
        interpret = not is_supported()
    b, h, w, d = x.shape
    n = A_logs.shape[-1]

    k = len(directions)

    def per_direction(t, cols):  # (k*D, cols) -> (k, cols, D): channels on lanes
        return jnp.swapaxes(t.astype(f32).reshape(k, d, cols), 1, 2)

    A = per_direction(-jnp.exp(A_logs.astype(f32)), n)
    y = _core(x.reshape(b, h * w, d), x_proj_weight.astype(f32), dt_projs_weight.astype(f32),
              per_direction(dt_projs_bias.reshape(-1, 1), 1), A, per_direction(Ds.reshape(-1, 1), 1),
              h, w, tuple(directions), interpret)
    return y.reshape(b, h, w, d)
