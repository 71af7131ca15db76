"""The fused SS2D core kernels against the XLA reference composition (cross-scan, projections, `lax.scan`, merge).

The Mosaic TPU fused core runs here in Pallas' interpreter. Shapes are small (the interpreter walks every scan step
in Python-level loops) but cover what the indexing must get right: non-square maps (the column-major orders), odd
sizes, one-pixel rows and columns, d_state 1 (v05_noz) and 16 (v0), fp32 and bf16 activations. Forward and
`jax.grad` wrt every input (x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds).

Tolerances (max abs error relative to the reference's max abs value): fp32 1e-5 forward, 1e-4 grads; bf16
activations 2e-2 (the reference rounds the projections to bf16, the kernel keeps them in fp32).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from pallas_kernels.selective_scan.testing import rel_err
from pallas_kernels.ss2d import api, pallas_mosaic_tpu
from pallas_kernels.ss2d.reference import ss2d_core_reference
from pallas_kernels.ss2d.testing import make_core_inputs

ARG_NAMES = ("x", "x_proj_weight", "dt_projs_weight", "dt_projs_bias", "A_logs", "Ds")
TOL = {jnp.float32: (1e-5, 1e-4), jnp.bfloat16: (2e-2, 2e-2)}


def fused(*args):
    return pallas_mosaic_tpu.ss2d_core(*args, interpret=True)


def reference(*args):
    return ss2d_core_reference(*args, scan_implementation="xla")


# Every map shape with both state sizes in fp32; bf16 (the same kernel with casts at the edges) on two of them.
CASES = ([(hw, n, jnp.float32) for hw in [(3, 5), (4, 4), (1, 6), (7, 2)] for n in (1, 16)]
         + [((3, 5), 1, jnp.bfloat16), ((7, 2), 16, jnp.bfloat16)])


@pytest.mark.parametrize("hw,d_state,dtype", CASES,
                         ids=[f"{h}x{w}-N{n}-{jnp.dtype(t).name}" for (h, w), n, t in CASES])
def test_fused_tpu_core_matches_reference(hw, d_state, dtype):
    args = make_core_inputs(0, 2, *hw, 8, d_state, 2, dtype)
    fwd_tol, grad_tol = TOL[dtype]
    y_ref = jax.jit(reference)(*args)
    y = jax.jit(fused)(*args)
    assert y.dtype == jnp.float32 and y.shape == y_ref.shape
    assert rel_err(y, y_ref) < fwd_tol, f"forward error {rel_err(y, y_ref):.2e}"

    cot = jax.random.normal(jax.random.PRNGKey(7), y_ref.shape)
    argnums = tuple(range(len(args)))
    g_ref = jax.jit(jax.grad(lambda *a: jnp.sum(reference(*a) * cot), argnums))(*args)
    g = jax.jit(jax.grad(lambda *a: jnp.sum(fused(*a) * cot), argnums))(*args)
    for name, gi, gr, a in zip(ARG_NAMES, g, g_ref, args):
        assert gi.shape == a.shape and gi.dtype == a.dtype, name
        assert rel_err(gi, gr) < grad_tol, f"d{name}: error {rel_err(gi, gr):.2e}"


def test_fused_tpu_core_at_a_vmamba_stage_size():
    """The 14x14 stage (L = 196, the chunked backward walks 14 chunks per order) with the v05 shapes."""
    args = make_core_inputs(1, 1, 14, 14, 16, 1, 4, jnp.float32)
    cot = jax.random.normal(jax.random.PRNGKey(3), (1, 14, 14, 16))
    y_ref, vjp_ref = jax.vjp(reference, *args)
    y, vjp = jax.vjp(jax.jit(fused), *args)
    assert rel_err(y, y_ref) < 1e-5
    for name, gi, gr in zip(ARG_NAMES, vjp(cot), vjp_ref(cot)):
        assert rel_err(gi, gr) < 1e-4, f"d{name}: error {rel_err(gi, gr):.2e}"


def test_dispatch_knows_the_fused_core():
    assert "fused_mosaic_tpu" in api.implementations()
    assert api.resolve_implementation("fused_mosaic_tpu") == "fused_mosaic_tpu"
    if jax.default_backend() == "cpu":
        assert not pallas_mosaic_tpu.is_supported()
        assert api.resolve_implementation("auto") == "associative"


def test_direction_subsets_sum_to_the_whole_core():
    """`directions=` (what direction parallelism runs per device): the parts of the merged sum add up to the full
    core, for the reference composition and the fused kernel, whatever the split."""
    args = make_core_inputs(2, 1, 3, 5, 8, 4, 2, jnp.float32)
    x, wx, wdt, bias, A_logs, Ds = args
    d = x.shape[-1]

    def part(core, dirs):
        ks = jnp.array(dirs)
        rows = (ks[:, None] * d + jnp.arange(d)).reshape(-1)
        return core(x, wx[ks], wdt[ks], bias[ks], A_logs[rows], Ds[rows], directions=tuple(dirs))

    full = reference(*args)
    ref_core = lambda *a, directions: ss2d_core_reference(*a, scan_implementation="xla", directions=directions)
    fused_core = lambda *a, directions: pallas_mosaic_tpu.ss2d_core(*a, interpret=True, directions=directions)
    for core in (ref_core, fused_core):
        for split in ([(0, 1), (2, 3)], [(0,), (1,), (2,), (3,)], [(3, 1), (2, 0)]):
            assert rel_err(sum(part(core, s) for s in split), full) < 1e-5, split
