"""The selective scan (S6) as a plain `lax.scan`: the op's contract.

Every other implementation (chunked associative scan, Pallas kernels) is tested against this one. It is slow on
accelerators (one sequential step per position) but obviously right, and it follows the official CUDA op exactly:

    delta_t = softplus(delta[b, c, t] + delta_bias[c])      # official threshold: x > 20 passes through
    h_t[n]  = exp(delta_t * A[c, n]) * h_{t-1}[n] + delta_t * B[b, g, n, t] * u[b, c, t],   h_{-1} = 0
    y[b, c, t] = sum_n C[b, g, n, t] * h_t[n] + D[c] * u[b, c, t]

with channel c in group g = c // (channels // G): B and C are shared by the channels of a group (VMamba: G = K = 4
scan directions, each with D channels).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

SOFTPLUS_THRESHOLD = 20.0


def softplus(x: jax.Array) -> jax.Array:
    """Softplus with the CUDA kernel's rule: `x` itself above 20, `log1p(exp(x))` elsewhere.

    The inner `where` keeps the unused branch finite, so the gradient is `sigmoid(x)` up to and including the threshold
    and 1 above it (`jnp.minimum` would halve the gradient at x == 20, where it splits ties).
    """
    above = x > SOFTPLUS_THRESHOLD
    return jnp.where(above, x, jnp.log1p(jnp.exp(jnp.where(above, 0.0, x))))


def check_inputs(u, delta, A, B, C, D=None, delta_bias=None) -> tuple[int, int, int, int, int]:
    """Validates the official op's shapes; returns (batch, channels, length, groups, d_state)."""
    if u.ndim != 3:
        raise ValueError(f"selective_scan: u must be (batch, channels, length), got shape {u.shape}")
    batch, channels, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"selective_scan: delta must have u's shape {u.shape}, got {delta.shape}")
    if A.ndim != 2 or A.shape[0] != channels:
        raise ValueError(f"selective_scan: A must be (channels={channels}, d_state), got {A.shape}")
    d_state = A.shape[1]
    if B.ndim != 4 or B.shape[0] != batch or B.shape[2] != d_state or B.shape[3] != length:
        raise ValueError(
            f"selective_scan: B must be (batch={batch}, groups, d_state={d_state}, length={length}), got {B.shape}")
    if C.shape != B.shape:
        raise ValueError(f"selective_scan: C must have B's shape {B.shape}, got {C.shape}")
    groups = B.shape[1]
    if channels % groups:
        raise ValueError(f"selective_scan: channels ({channels}) must be a multiple of the B/C groups ({groups})")
    for name, v in (("D", D), ("delta_bias", delta_bias)):
        if v is not None and v.shape != (channels,):
            raise ValueError(f"selective_scan: {name} must be ({channels},), got {v.shape}")
    return batch, channels, length, groups, d_state


def discretize_inputs(u, delta, A, B, C, delta_bias, delta_softplus):
    """fp32 casts and delta = softplus(delta + bias): the prologue every implementation shares."""
    f32 = jnp.float32
    dt = delta.astype(f32)
    if delta_bias is not None:
        dt = dt + delta_bias.astype(f32)[None, :, None]
    if delta_softplus:
        dt = softplus(dt)
    return u.astype(f32), dt, A.astype(f32), B.astype(f32), C.astype(f32)


def selective_scan_reference(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True):
    """`lax.scan` over the sequence. Shapes as in the module docstring; returns y (batch, channels, length) fp32."""
    batch, channels, length, groups, d_state = check_inputs(u, delta, A, B, C, D, delta_bias)
    u, dt, A, B, C = discretize_inputs(u, delta, A, B, C, delta_bias, delta_softplus)
    per_group = channels // groups
    A = A.reshape(groups, per_group, d_state)

    def to_time_major(x):  # (batch, channels, L) -> (L, batch, groups, per_group)
        return jnp.moveaxis(x.reshape(batch, groups, per_group, length), -1, 0)

    def step(h, inputs):  # h: (batch, groups, per_group, d_state)
        dt_t, u_t, b_t, c_t = inputs
        h = jnp.exp(dt_t[..., None] * A) * h + (dt_t * u_t)[..., None] * b_t[:, :, None, :]
        return h, jnp.einsum("bgdn,bgn->bgd", h, c_t, precision=jax.lax.Precision.HIGHEST)

    h0 = jnp.zeros((batch, groups, per_group, d_state), jnp.float32)
    xs = (to_time_major(dt), to_time_major(u), jnp.moveaxis(B, -1, 0), jnp.moveaxis(C, -1, 0))
    _, y = jax.lax.scan(step, h0, xs)
    y = jnp.moveaxis(y, 0, -1).reshape(batch, channels, length)
    if D is not None:
        y = y + D.astype(jnp.float32)[None, :, None] * u
    return y
