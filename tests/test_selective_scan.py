"""The chunked associative scan against the `lax.scan` reference: forward and the gradient of every input.

Tolerances: fp32 1e-5 relative (observed ~1e-7); bf16 inputs 1e-2 (both sides see the same rounded inputs, the math
is fp32, so the observed error is ~1e-7 too: the bound is for the op contract, not the implementation).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import selective_scan
from pallas_kernels.selective_scan import (available_implementations, resolve_implementation,
                                           selective_scan_associative, selective_scan_reference, softplus)
from pallas_kernels.selective_scan.testing import make_inputs, rel_err


# (batch, K, D, N, L): VMamba's four stage lengths at 224 (3136, 784, 196, 49) with small channel counts, an odd L,
# and d_state 16 (vanilla v0) across chunk boundaries.
SHAPES = [(1, 4, 2, 1, 3136), (2, 4, 4, 1, 784), (2, 4, 4, 16, 196), (2, 4, 8, 1, 49), (1, 4, 4, 16, 301)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 1e-2)])
def test_associative_forward_matches_reference(shape, dtype, tol):
    args = make_inputs(0, *shape, dtype=dtype)
    y_ref = jax.jit(selective_scan_reference)(*args)
    y = jax.jit(selective_scan_associative)(*args)
    assert y.dtype == jnp.float32 and y_ref.dtype == jnp.float32
    assert y.shape == args[0].shape
    assert rel_err(y, y_ref) < tol


@pytest.mark.parametrize("shape", [(2, 4, 4, 1, 196), (2, 4, 4, 16, 301), (1, 4, 2, 1, 784)])
@pytest.mark.parametrize("chunk_size", [None, 64])
def test_associative_gradients_match_reference(shape, chunk_size):
    args = make_inputs(1, *shape)
    cot = jnp.asarray(np.random.default_rng(2).standard_normal(args[0].shape).astype(np.float32))

    def loss(fn, *a):
        return jnp.sum(fn(*a) * cot)

    argnums = tuple(range(7))
    g_ref = jax.jit(jax.grad(lambda *a: loss(selective_scan_reference, *a), argnums))(*args)
    g = jax.jit(jax.grad(lambda *a: loss(lambda *b: selective_scan_associative(*b, chunk_size=chunk_size), *a),
                         argnums))(*args)
    for name, a, b in zip(("u", "delta", "A", "B", "C", "D", "delta_bias"), g, g_ref):
        assert rel_err(a, b) < 1e-4, name


def test_softplus_threshold_matches_the_cuda_kernel():
    x = jnp.array([-30.0, -1.0, 0.0, 19.9, 20.0, 20.1, 50.0])
    y = softplus(x)
    np.testing.assert_allclose(y[-2:], x[-2:])                        # x > 20 passes through
    np.testing.assert_allclose(y[:5], np.log1p(np.exp(np.asarray(x[:5]))), rtol=1e-6)
    g = jax.grad(lambda v: softplus(v).sum())(x)
    np.testing.assert_allclose(g[:5], jax.nn.sigmoid(x[:5]), rtol=1e-6)
    np.testing.assert_allclose(g[5:], 1.0)
    assert np.all(np.isfinite(g))


def test_without_optional_arguments_and_without_softplus():
    u, delta, A, B, C, _, _ = make_inputs(3, 1, 4, 2, 16, 33)
    for kw in (dict(D=None, delta_bias=None, delta_softplus=False), dict(D=None, delta_bias=None)):
        y_ref = selective_scan_reference(u, jnp.abs(delta), A, B, C, **kw)
        y = selective_scan(u, jnp.abs(delta), A, B, C, implementation="associative", **kw)
        assert rel_err(y, y_ref) < 1e-5


def test_dispatch_and_clear_errors():
    assert resolve_implementation("auto") in available_implementations()
    assert resolve_implementation(None) == resolve_implementation("auto")
    assert {"xla", "associative"} <= set(available_implementations("cpu"))
    u, delta, A, B, C, D, bias = make_inputs(4, 1, 4, 2, 1, 9)
    with pytest.raises(ValueError, match="unknown implementation"):
        selective_scan(u, delta, A, B, C, D, bias, implementation="cuda")
    with pytest.raises(ValueError, match="B must be"):
        selective_scan(u, delta, A, B[..., :-1], C, D, bias)
    with pytest.raises(ValueError, match="multiple of the B/C groups"):
        selective_scan(u[:, :7], delta[:, :7], A[:7], B, C, D[:7], bias[:7])
