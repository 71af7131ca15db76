"""The selective scan as a chunked `lax.associative_scan`: the portable fast path (any backend, differentiable).

The sequence is cut into chunks of `chunk_size` positions. A `lax.scan` walks the chunks carrying the state
h (batch, channels, d_state); inside a chunk the recurrence h_t = a_t h_{t-1} + b_t is solved in log depth with the
associative operator (a_l, b_l) o (a_r, b_r) = (a_r a_l, a_r b_l + b_r), the one the official CUDA kernel uses.
Each chunk body is rematerialised (`jax.checkpoint`), so forward and backward hold O(batch * channels * d_state *
chunk_size) floats instead of the O(... * L) that one whole-sequence associative scan would materialise: the
difference between fitting and not fitting at d_state 16. Padding uses neutral values (delta = 0 gives a = 1, b = 0).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from pallas_kernels.selective_scan.reference import check_inputs, discretize_inputs

# Positions times d_state per chunk. With d_state 1 (VMamba v2) a 56x56 stage (L = 3136) is one chunk; with d_state 16
# chunks are 256 long.
_ELEMENTS_PER_CHUNK = 4096


def default_chunk_size(length: int, d_state: int) -> int:
    return max(1, min(length, _ELEMENTS_PER_CHUNK // d_state))


def _combine(left, right):
    a_l, b_l = left
    a_r, b_r = right
    return a_r * a_l, a_r * b_l + b_r


def selective_scan_associative(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, *,
                               chunk_size: int | None = None):
    """Same contract as `selective_scan_reference`; `chunk_size` None picks `default_chunk_size`."""
    batch, channels, length, groups, d_state = check_inputs(u, delta, A, B, C, D, delta_bias)
    u, dt, A, B, C = discretize_inputs(u, delta, A, B, C, delta_bias, delta_softplus)
    per_group = channels // groups
    A = A.reshape(groups, per_group, d_state)
    T = chunk_size or default_chunk_size(length, d_state)
    n_chunks = math.ceil(length / T)
    pad = n_chunks * T - length

    # Time-major chunks: the associative scan then slices whole rows of the leading axis.
    def chunks(x):  # (batch, rows, per_row, L) -> (n_chunks, T, batch, rows, per_row)
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, pad)))
        return jnp.moveaxis(x, -1, 0).reshape(n_chunks, T, *x.shape[:-1])

    dt_c = chunks(dt.reshape(batch, groups, per_group, length))
    u_c = chunks(u.reshape(batch, groups, per_group, length))
    B_c, C_c = chunks(B), chunks(C)  # (n_chunks, T, batch, groups, d_state)

    @jax.checkpoint
    def chunk_body(h0, xs):
        dt_t, u_t, b_t, c_t = xs
        a = jnp.exp(dt_t[..., None] * A)                       # (T, batch, groups, per_group, d_state)
        b = (dt_t * u_t)[..., None] * b_t[:, :, :, None, :]
        a_cum, b_cum = jax.lax.associative_scan(_combine, (a, b), axis=0)
        h = a_cum * h0[None] + b_cum
        return h[-1], jnp.einsum("tbgdn,tbgn->tbgd", h, c_t, precision=jax.lax.Precision.HIGHEST)

    h0 = jnp.zeros((batch, groups, per_group, d_state), jnp.float32)
    if n_chunks == 1:
        _, y = chunk_body(h0, (dt_c[0], u_c[0], B_c[0], C_c[0]))
        y = y[None]
    else:
        _, y = jax.lax.scan(chunk_body, h0, (dt_c, u_c, B_c, C_c))
    y = y.reshape(n_chunks * T, batch, channels)[:length]
    y = jnp.moveaxis(y, 0, -1)
    if D is not None:
        y = y + D.astype(jnp.float32)[None, :, None] * u
    return y
