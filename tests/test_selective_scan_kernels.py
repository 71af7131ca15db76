"""The Pallas selective-scan kernels against the `lax.scan` reference: forward and `jax.grad` wrt every input.

The Mosaic TPU kernel runs here in Pallas' interpreter (`interpret=True`). The Mosaic GPU kernel has no CPU
interpreter: it is exercised by `benchmarks/gpu_kernel_tests.py` on a GPU (output committed under
benchmarks/results/); here we only check that its `is_supported()` is False off-GPU, so 'auto' never picks it.

Tolerances (max abs error relative to the reference's max abs value): fp32 inputs 1e-5 forward and 1e-4 for grads
(the grads sum thousands of terms in a different order); bf16 inputs 1e-2 (the kernels read bf16 and compute in fp32
like the reference, so the gap comes from bf16 gradient outputs).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from pallas_kernels.selective_scan import api, pallas_mosaic_tpu
from pallas_kernels.selective_scan.reference import selective_scan_reference
from pallas_kernels.selective_scan.testing import make_inputs, rel_err

ARG_NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")
TOL = {jnp.float32: (1e-5, 1e-4), jnp.bfloat16: (1e-2, 1e-2)}  # (forward, grad), relative to max |reference|






def check_against_reference(fn, args, dtype):
    fwd_tol, grad_tol = TOL[dtype]
    y_ref = selective_scan_reference(*args)
    y = jax.jit(fn)(*args)
    assert y.dtype == jnp.float32 and y.shape == y_ref.shape
    assert rel_err(y, y_ref) < fwd_tol, f"forward error {rel_err(y, y_ref):.2e}"

    w = jax.random.normal(jax.random.PRNGKey(99), y_ref.shape)  # random cotangent: every output position matters
    argnums = tuple(range(len(args)))
    g_ref = jax.grad(lambda *a: jnp.sum(selective_scan_reference(*a) * w), argnums)(*args)
    g = jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a) * w), argnums))(*args)
    for name, gi, gr, a in zip(ARG_NAMES, g, g_ref, args):
        assert gi.shape == a.shape and gi.dtype == a.dtype, name
        assert rel_err(gi, gr) < grad_tol, f"d{name}: error {rel_err(gi, gr):.2e}"


def tpu_interpret(*args):
    return pallas_mosaic_tpu.selective_scan(*args, interpret=True)


# VMamba's four stage lengths (56^2, 28^2, 14^2, 7^2) and an odd one; tiny batch/channels keep the interpreter fast.
@pytest.mark.parametrize("length", [49, 196, 37, 784, pytest.param(3136, marks=pytest.mark.slow)])
@pytest.mark.parametrize("d_state", [1, 16])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["fp32", "bf16"])
def test_tpu_kernel_interpret_matches_reference(length, d_state, dtype):
    args = make_inputs(length + d_state, batch=2, groups=2, per_group=8, d_state=d_state, length=length, dtype=dtype)
    check_against_reference(tpu_interpret, args, dtype)


def test_tpu_kernel_tiles_and_padding():
    """Channel padding (12 channels per group -> tile 16), several sequence tiles, no D / delta_bias, no softplus."""
    u, delta, A, B, C, _, _ = make_inputs(3, batch=1, groups=2, per_group=12, d_state=4, length=150,
                                          dtype=jnp.float32)
    delta = jnp.abs(delta) * 0.1  # without softplus delta must stay positive for a stable recurrence

    def fn(u, delta, A, B, C):
        return pallas_mosaic_tpu.selective_scan(u, delta, A, B, C, None, None, False, interpret=True,
                                                seq_tile=32, channel_tile=16)

    y_ref = selective_scan_reference(u, delta, A, B, C, None, None, False)
    assert rel_err(fn(u, delta, A, B, C), y_ref) < 1e-5
    w = jax.random.normal(jax.random.PRNGKey(1), y_ref.shape)
    g_ref = jax.grad(lambda *a: jnp.sum(selective_scan_reference(*a, None, None, False) * w), range(5))(
        u, delta, A, B, C)
    g = jax.grad(lambda *a: jnp.sum(fn(*a) * w), range(5))(u, delta, A, B, C)
    for name, gi, gr in zip(ARG_NAMES, g, g_ref):
        assert rel_err(gi, gr) < 1e-4, name


def test_tpu_kernel_carry_is_checked():
    """A kernel that dropped the state between sequence tiles must fail the comparison (the test can fail)."""
    args = make_inputs(5, batch=1, groups=1, per_group=8, d_state=1, length=96, dtype=jnp.float32)
    args = (args[0], args[1] - 4.0) + args[2:]  # small delta: slow decay, so the carried state matters
    y_ref = selective_scan_reference(*args)
    whole = pallas_mosaic_tpu.selective_scan(*args, interpret=True, seq_tile=96)
    tiled = pallas_mosaic_tpu.selective_scan(*args, interpret=True, seq_tile=32)
    assert rel_err(whole, y_ref) < 1e-5 and rel_err(tiled, y_ref) < 1e-5
    # Per-tile restart emulated by scanning the three tiles separately.
    restarted = jnp.concatenate([
        selective_scan_reference(args[0][..., s:s + 32], args[1][..., s:s + 32], args[2], args[3][..., s:s + 32],
                                 args[4][..., s:s + 32], *args[5:]) for s in (0, 32, 64)], axis=-1)
    assert rel_err(restarted, y_ref) > 1e-3


def test_gpu_kernel_not_supported_off_gpu():
    from pallas_kernels.selective_scan import pallas_mosaic_gpu
    if jax.default_backend() != "gpu":
        assert not pallas_mosaic_gpu.is_supported()
    assert "pallas_mosaic_gpu" not in api.available_implementations("cpu") or jax.default_backend() == "gpu"


def test_dispatch_names_the_kernels():
    assert "pallas_mosaic_tpu" in api.IMPLEMENTATIONS and "pallas_mosaic_gpu" in api.IMPLEMENTATIONS
    assert api.resolve_implementation("pallas_mosaic_tpu") == "pallas_mosaic_tpu"
    if jax.default_backend() == "cpu":
        assert api.resolve_implementation("auto") == "associative"
