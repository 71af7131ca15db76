"""The selective scan as a chunked `lax.associative_scan`: the portable fast path (any backend, differentiable).

The sequence is cut into chunks of `chunk_size` positions. A `lax.scan` walks the chunks carrying the state
h (batch, channels, d_state); inside a chunk the recurrence h_t = a_t h_{t-1} + b_t is solved in log depth with the
associative operator (a_l, b_l) o (a_r, b_r) = (a_r a_l, a_r b_l + b_r), the one the official CUDA kernel uses.
The chunk body has its own VJP (`_chunk`): the backward recomputes the chunk's states with the same associative scan
and solves the adjoint recurrence g_t = C_t dy_t + a_{t+1} g_{t+1}, itself a linear recurrence, with one more
associative scan run backwards in time; every gradient is then elementwise in (h_{t-1}, g_t). So forward and
backward hold O(batch * channels * d_state * chunk_size) floats instead of the O(... * L) that one whole-sequence
associative scan would materialise (the difference between fitting and not fitting at d_state 16), and the backward
is two associative scans plus elementwise work instead of the transpose of one (autodiff through
`lax.associative_scan`) after a checkpoint's recompute (VMamba-T grad on CPU: 931 -> 656 ms, see the commit).
Padding uses neutral values (delta = 0 gives a = 1, b = 0).
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


def _linear_recurrence(a, b, h0):
    """h_t = a_t h_{t-1} + b_t over axis 0, h_{-1} = h0: all T states in log depth."""
    a_cum, b_cum = jax.lax.associative_scan(_combine, (a, b), axis=0)
    return a_cum * h0[None] + b_cum


def _chunk_states(h0, A, dt, u, B):
    """Decays a (T, batch, groups, per_group, N) and the states h of one chunk."""
    a = jnp.exp(dt[..., None] * A)
    b = (dt * u)[..., None] * B[:, :, :, None, :]
    return a, _linear_recurrence(a, b, h0)


@jax.custom_vjp
def _chunk(h0, A, dt, u, B, C):
    """One chunk: h0 (batch, groups, per_group, N); A (groups, per_group, N); dt, u (T, batch, groups, per_group);
    B, C (T, batch, groups, N). Returns (last state, y (T, batch, groups, per_group)), y without the D skip."""
    _, h = _chunk_states(h0, A, dt, u, B)
    return h[-1], jnp.einsum("tbgdn,tbgn->tbgd", h, C, precision=jax.lax.Precision.HIGHEST)


def _chunk_fwd(h0, A, dt, u, B, C):
    return _chunk(h0, A, dt, u, B, C), (h0, A, dt, u, B, C)  # states are recomputed in the backward


def _chunk_bwd(res, cotangents):
    h0, A, dt, u, B, C = res
    dh_last, dy = cotangents
    hp = jax.lax.Precision.HIGHEST
    a, h = _chunk_states(h0, A, dt, u, B)
    # Adjoint of the states: g_t = dL/dh_t = C_t dy_t + a_{t+1} g_{t+1}, g_{T-1} also gets dh_last. Solved as a
    # forward recurrence on the time-reversed sequence.
    local = dy[..., None] * C[:, :, :, None, :]
    local = local.at[-1].add(dh_last)
    a_next = jnp.concatenate([a[1:], jnp.ones_like(a[:1])], axis=0)
    g = _linear_recurrence(a_next[::-1], local[::-1], jnp.zeros_like(h0))[::-1]
    h_prev = jnp.concatenate([h0[None], h[:-1]], axis=0)
    da = g * h_prev * a                                    # d/d(dt*A): a = exp(dt*A)
    d_dtu = jnp.einsum("tbgdn,tbgn->tbgd", g, B, precision=hp)
    dt_u = dt * u
    d_dt = jnp.sum(da * A, axis=-1) + d_dtu * u
    return (a[0] * g[0],                                   # dh0
            jnp.einsum("tbgdn,tbgd->gdn", da, dt, precision=hp),   # dA
            d_dt,
            d_dtu * dt,                                    # du
            jnp.einsum("tbgdn,tbgd->tbgn", g, dt_u, precision=hp),  # dB
            jnp.einsum("tbgdn,tbgd->tbgn", h, dy, precision=hp))    # dC


_chunk.defvjp(_chunk_fwd, _chunk_bwd)


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

    def chunk_body(h0, xs):
        return _chunk(h0, A, *xs)

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
