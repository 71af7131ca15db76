"""Inputs and error measure for checking selective-scan implementations against the reference (tests, GPU scripts)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def make_inputs(seed, batch, groups, per_group, d_state, length, dtype=jnp.float32):
    """Random op inputs in the official shapes (u, delta, A, B, C, D, delta_bias).

    delta spans the softplus knee and a few values pass the threshold of 20 (the identity branch); A = -exp(...) < 0.
    u, delta, B, C are in `dtype`; A, D, delta_bias are fp32 like the model's parameters.
    """
    ks = jax.random.split(jax.random.PRNGKey(seed), 7)
    ch = groups * per_group
    u = jax.random.normal(ks[0], (batch, ch, length)).astype(dtype)
    delta = (jax.random.normal(ks[1], (batch, ch, length)) - 1.0).astype(dtype)
    delta = delta.at[:, :2, ::7].set(21.0)
    A = -jnp.exp(0.5 * jax.random.normal(ks[2], (ch, d_state)))
    B = jax.random.normal(ks[3], (batch, groups, d_state, length)).astype(dtype)
    C = jax.random.normal(ks[4], (batch, groups, d_state, length)).astype(dtype)
    D = jax.random.normal(ks[5], (ch,))
    bias = 0.5 * jax.random.normal(ks[6], (ch,))
    return u, delta, A, B, C, D, bias


def rel_err(x, ref) -> float:
    """max |x - ref| / max |ref| in float64; inf when x has a non-finite value (NaN never passes)."""
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    if not np.all(np.isfinite(x)):
        return float("inf")
    return float(np.abs(x - ref).max() / max(np.abs(ref).max(), 1e-12))


def mosaic_gpu_interpreter():
    """Parameters for Pallas' Mosaic GPU interpreter, which runs `plgpu.kernel`s on the CPU (threads, SMEM, barriers
    and TMA simulated). JAX does not export it yet, hence the private import: a JAX that moved it fails loudly here."""
    from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams

    return InterpretGPUParams()
