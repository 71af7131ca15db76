"""The Mosaic GPU scan and fused SS2D core, off-GPU: everything but the kernel bodies.

Mosaic GPU has no CPU interpreter, so the kernels themselves are tested on a GPU (`benchmarks/gpu_kernel_tests.py`,
results under benchmarks/results/). Here:

* both kernels (forward and backward, d_state 1 and 16, fp32 and bf16) *lower* for CUDA on this CPU machine
  (`jax.export(..., platforms=["cuda"])` runs the Pallas -> Mosaic GPU lowering), so a kernel that cannot be built
  fails CI instead of a device call;
* the wrappers (layouts, padding, the parameter tile, sources and reversed orders of the fused core, the custom_vjp's
  source sums and low-rank contraction) run with the two kernel calls `_forward` / `_backward` replaced by an XLA
  emulation of their contract, and must reproduce the XLA references, forward and every gradient;
* under `jax.shard_map` on 8 fake CPU devices (batch sharded; batch x direction sharded) the fused core lowers for
  CUDA and, emulated, gives the unsharded result;
* `implementation="auto"` on a Hopper GPU picks the fused core only for a verified d_state.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from jax.extend.core import jaxprs_in_params

from pallas_kernels.selective_scan import api as scan_api
from pallas_kernels.selective_scan import pallas_mosaic_gpu as mgpu
from pallas_kernels.selective_scan.reference import selective_scan_reference
from pallas_kernels.selective_scan.testing import make_inputs, rel_err
from pallas_kernels.ss2d import api as ss2d_api
from pallas_kernels.ss2d import pallas_mosaic_gpu as fused
from pallas_kernels.ss2d.reference import ss2d_core_reference
from pallas_kernels.ss2d.testing import make_core_inputs

f32 = jnp.float32


# ------------------------------------------------------------------------------------------------ lowering for CUDA

def _export_for_cuda(fn, *args):
    shapes = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in args]
    text = jax.export.export(jax.jit(fn), platforms=["cuda"])(*shapes).mlir_module()
    return len(re.findall(r"stablehlo.custom_call @mosaic_gpu", text))


@pytest.mark.parametrize("d_state", [1, 16])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["fp32", "bf16"])
def test_kernels_lower_for_cuda(d_state, dtype):
    args = make_inputs(0, batch=2, groups=4, per_group=96, d_state=d_state, length=37, dtype=dtype)
    plain = lambda *a: mgpu.selective_scan(*a)  # noqa: E731
    assert _export_for_cuda(plain, *args) == 1
    assert _export_for_cuda(jax.grad(lambda *a: plain(*a).sum(), tuple(range(7))), *args) == 2  # fwd + bwd kernels

    core = make_core_inputs(0, 2, 5, 7, 96, d_state, 6, dtype)
    assert _export_for_cuda(fused.ss2d_core, *core) == 1
    assert _export_for_cuda(jax.grad(lambda *a: fused.ss2d_core(*a).sum(), tuple(range(6))), *core) == 2
    if d_state > 1:
        return  # backward tile 16 at d_state 16 needs more SMEM than an SM has (the lowering says so)
    # The tuning variants benchmarks/scan_bench.py --sweep times: outputs through SMEM tiles and TMA stores (d_state
    # 1's default stores straight to GMEM), other tiles, unrolled, exact exp / log (the default, approx_math, must put
    # ex2.approx / lg2.approx in the PTX).
    variant = lambda *a: fused.ss2d_core(*a, seq_tile=16, bwd_seq_tile=16, unroll=4, direct_store=False)  # noqa: E731
    assert _export_for_cuda(jax.grad(lambda *a: variant(*a).sum(), tuple(range(6))), *core) == 2
    exact = lambda *a: fused.ss2d_core(*a, approx_math=False)  # noqa: E731
    assert _export_for_cuda(jax.grad(lambda *a: exact(*a).sum(), tuple(range(6))), *core) == 2
    xla_delta = lambda *a: fused.ss2d_core(*a, delta_in_kernel=False)  # noqa: E731 - delta read, not formed
    assert _export_for_cuda(jax.grad(lambda *a: xla_delta(*a).sum(), tuple(range(6))), *core) == 2
    cached = lambda *a: fused.ss2d_core(*a, cache_steps=True)  # noqa: E731 - the backward's per-step SMEM cache
    assert _export_for_cuda(jax.grad(lambda *a: cached(*a).sum(), tuple(range(6))), *core) == 2
    in_regs = lambda *a: fused.ss2d_core(*a, register_states=True)  # noqa: E731 - the backward's states as values
    assert _export_for_cuda(jax.grad(lambda *a: in_regs(*a).sum(), tuple(range(6))), *core) == 2
    static = lambda *a: fused.ss2d_core(*a, static_orders=True)  # noqa: E731 - a compiled walk per order
    assert _export_for_cuda(jax.grad(lambda *a: static(*a).sum(), tuple(range(6))), *core) == 2
    static_merged = lambda *a: fused.ss2d_core(*a, static_orders=True, merge_in_kernel=True)  # noqa: E731
    assert _export_for_cuda(jax.grad(lambda *a: static_merged(*a).sum(), tuple(range(6))), *core) == 2
    pixel = lambda *a: fused.ss2d_core(*a, pixel_outputs=True)  # noqa: E731 - per-order outputs at their pixels
    assert _export_for_cuda(jax.grad(lambda *a: pixel(*a).sum(), tuple(range(6))), *core) == 2
    plain_cached = lambda *a: mgpu.selective_scan(*a, cache_steps=True)  # noqa: E731
    assert _export_for_cuda(jax.grad(lambda *a: plain_cached(*a).sum(), tuple(range(7))), *args) == 2
    # A split walk: the forward adds the split-summary kernel; the gradient has the training forward's pair and the
    # backward's (adjoint summaries, backward kernel).
    split = lambda *a: fused.ss2d_core(*a, splits=2)  # noqa: E731
    assert _export_for_cuda(split, *core) == 2
    assert _export_for_cuda(jax.grad(lambda *a: split(*a).sum(), tuple(range(6))), *core) == 4
    plain_split = lambda *a: mgpu.selective_scan(*a, splits=3)  # noqa: E731
    assert _export_for_cuda(jax.grad(lambda *a: plain_split(*a).sum(), tuple(range(7))), *args) == 4
    shapes = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in core]
    for fn, want in ((fused.ss2d_core, 1), (exact, 0)):  # softplus' log: lg2.approx in the kernel's PTX (default), or not
        text = jax.export.export(jax.jit(fn), platforms=["cuda"])(*shapes).mlir_module()
        assert text.count("lg2.approx") == want


def test_merge_in_kernel_lowers_with_atomic_adds():
    """The in-kernel merge lowers for CUDA (forward; training forward + backward) with atomic adds that the default
    plan has none of, and is refused with a plan it cannot serve (SMEM output tiles, a split walk)."""
    core = make_core_inputs(0, 2, 5, 7, 96, 1, 6, jnp.bfloat16)
    shapes = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in core]
    for merge in (True, False):
        op = lambda *a, m=merge: fused.ss2d_core(*a, merge_in_kernel=m)  # noqa: E731
        grad = jax.grad(lambda *a: op(*a).sum(), tuple(range(6)))
        assert _export_for_cuda(op, *core) == 1 and _export_for_cuda(grad, *core) == 2
        text = jax.export.export(jax.jit(grad), platforms=["cuda"])(*shapes).mlir_module()
        assert ("atomic_store" in text) == merge
    for bad in (dict(direct_store=False), dict(splits=2)):
        with pytest.raises(ValueError, match="needs direct_store=True and splits=1"):
            fused.ss2d_core(*core, merge_in_kernel=True, **bad)
    # pixel_outputs: the same constraints, and no atomic merge beside it; by default it stays off where it can't run.
    for bad in (dict(direct_store=False), dict(splits=2), dict(merge_in_kernel=True)):
        with pytest.raises(ValueError, match="pixel_outputs .* needs direct_store=True, splits=1"):
            fused.ss2d_core(*core, pixel_outputs=True, **bad)
    assert not fused.resolve_pixel_outputs(None, False, 1, False)


def test_y_in_compute_dtype_defaults():
    """On by default only at the d_states its GPU test passed with; never beside the atomic merge (f32 adds)."""
    assert fused.resolve_y_in_compute_dtype(None, 1, False) and fused.resolve_y_in_compute_dtype(None, 16, False)
    assert not fused.resolve_y_in_compute_dtype(None, 4, False)                 # never run on the GPU with it
    assert fused.resolve_y_in_compute_dtype(True, 4, False) and not fused.resolve_y_in_compute_dtype(True, 1, True)


def test_dbc_by_xla_needs_direct_store():
    """The products go straight to GMEM, so a plan with SMEM output tiles is refused when the backward is traced."""
    args = make_inputs(0, batch=2, groups=4, per_group=96, d_state=1, length=64, dtype=jnp.float32)
    grad = jax.grad(lambda *a: mgpu.selective_scan(*a, direct_store=False, dbc_by_xla=True).sum(), tuple(range(7)))
    with pytest.raises(ValueError, match="needs direct_store=True"):
        _export_for_cuda(grad, *args)
    fast = jax.grad(lambda *a: mgpu.selective_scan(*a, dbc_by_xla=True).sum(), tuple(range(7)))
    assert _export_for_cuda(fast, *args) == 2


def test_direct_store_tiles_end_with_a_warpgroup_barrier(monkeypatch):
    """With every output in GMEM, emit_pipeline refills a step's input slots right after its body without syncing
    the warpgroup (a race only the GPU shows: the direct_store plans were off by 0.08-0.36 on the H200); the kernels
    put a barrier (commit_smem: fence + bar.sync) at the end of each such tile. It must reach the lowered kernel."""
    core = make_core_inputs(0, 2, 5, 7, 96, 1, 6, jnp.bfloat16)
    shapes = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in core]

    def barriers():
        fn = jax.grad(lambda *a: fused.ss2d_core(*a, direct_store=True).sum(), tuple(range(6)))
        return jax.export.export(jax.jit(fn), platforms=["cuda"])(*shapes).mlir_module().count("bar.sync")

    with_barrier = barriers()
    monkeypatch.setattr(mgpu, "_end_direct_tile", lambda plan: None)
    assert with_barrier > barriers()


def test_tiles_too_short_for_tma_are_refused_before_the_gpu_sees_them():
    """A plain scan's N = 1 B/C tile (f32 in the kernel, PROJ_DTYPE) at a backward tile of 8 is a 64-byte TMA copy:
    such a copy (then bf16 at tile 16) stopped the H200 with CUDA_ERROR_MISALIGNED_ADDRESS. The wrapper says which
    tiles work instead."""
    args = make_inputs(0, batch=2, groups=4, per_group=8, d_state=1, length=64, dtype=jnp.bfloat16)
    with pytest.raises(ValueError, match="bwd_seq_tile >= 16"):
        mgpu.selective_scan(*args, seq_tile=32, bwd_seq_tile=8)
    assert _export_for_cuda(lambda *a: mgpu.selective_scan(*a, seq_tile=16, bwd_seq_tile=16), *args) == 1  # 128 B
    core = make_core_inputs(0, 2, 5, 7, 96, 1, 6, jnp.bfloat16)  # time-major [dts | B | C] rows: no limit at 16
    assert _export_for_cuda(lambda *a: fused.ss2d_core(*a, seq_tile=16, bwd_seq_tile=16), *core) == 1

def test_split_walks_cover_each_split_with_whole_tiles():
    """Each of `splits` parts of the padded sequence is a whole number of both tiles, at least two (one pipeline per
    split); one split keeps the unsplit padding."""
    for length, splits in ((3136, 1), (3136, 2), (3136, 4), (3136, 7), (49, 3), (37, 5)):
        tl_f, tl_b, lp = mgpu.plan_tiles(length, 1, splits=splits)
        assert lp >= length and lp % splits == 0
        part = lp // splits
        assert part % tl_f == 0 and part % tl_b == 0 and part // max(tl_f, tl_b) >= 2, (length, splits)
    assert mgpu.plan_tiles(3136, 1, splits=1) == mgpu.plan_tiles(3136, 1)
    assert mgpu.plan_tiles(3136, 1, splits=7)[2] == 3136                    # 7 splits of 448 = 7 tiles of 64
    assert mgpu.resolve_splits(None) == mgpu.SPLITS and mgpu.resolve_splits(4) == 4
    with pytest.raises(ValueError, match="positive number of splits"):
        mgpu.resolve_splits(0)


def test_fast_plan_applies_only_where_the_gpu_checked_it():
    """Short sequences: the fused core at d_state 1 walks two tiles that cover L (a 4x4 map: 16 steps, not 128); the
    plain scan and d_state 16 keep the default tiles, and d_state 16 exact math and SMEM output tiles, on which their
    GPU tests passed."""
    fused_min = mgpu.min_seq_tile(6, 1, 2)
    assert mgpu.plan_tiles(16, 1, min_tile=fused_min) == (8, 8, 16)
    assert mgpu.plan_tiles(49, 1, min_tile=fused_min) == (32, 32, 64)
    assert mgpu.plan_tiles(3136, 1, min_tile=fused_min) == (64, 32, 3136)   # long sequences: unchanged
    assert mgpu.plan_tiles(16, 1) == (64, 32, 128)                          # no min_tile: the long tiles
    assert mgpu.plan_tiles(16, 1, bwd_seq_tile=mgpu.PLAIN_BWD_SEQ_TILE) == (64, 16, 128)  # the plain scan's
    # The plain scan's own backward tile: 16 where the GPU tests ran it (d_state 1), plan_tiles' default elsewhere.
    assert mgpu.resolve_plain_bwd_seq_tile(None, 1) == (16 if 1 in mgpu.FAST_PLAN_D_STATES else None)
    assert mgpu.resolve_plain_bwd_seq_tile(None, 16) is None and mgpu.resolve_plain_bwd_seq_tile(8, 1) == 8
    # States in registers free the states tile's SMEM: the longer backward tile fits two blocks to an SM again.
    assert mgpu.resolve_plain_bwd_seq_tile(None, 1, register_states=True) == (
        mgpu.PLAIN_BWD_SEQ_TILE_REGISTER_STATES if 1 in mgpu.FAST_PLAN_D_STATES else None)
    assert mgpu.resolve_plain_bwd_seq_tile(8, 1, register_states=True) == 8
    assert mgpu.plan_tiles(16, 1, seq_tile=32, bwd_seq_tile=32, min_tile=fused_min) == (32, 32, 64)  # asked for
    # A cap on the default backward tile (the fused core's with register_states) keeps the short-sequence shrink.
    assert mgpu.plan_tiles(3136, 1, max_bwd_tile=16) == (64, 16, 3136)
    assert mgpu.plan_tiles(16, 1, min_tile=fused_min, max_bwd_tile=16) == (8, 8, 16)
    assert mgpu.plan_tiles(3136, 1, bwd_seq_tile=32, max_bwd_tile=16) == (64, 32, 3136)
    assert mgpu.resolve_fused_max_bwd_tile(True, 1) == (16 if 1 in mgpu.FAST_PLAN_D_STATES else None)
    assert mgpu.resolve_fused_max_bwd_tile(False, 1) is None and mgpu.resolve_fused_max_bwd_tile(True, 16) is None
    # States in registers: the plain scan's default where the GPU tests ran it (d_state 1 and 16); the fused core's
    # from stage 1's length up, where it was timed faster.
    if mgpu.REGISTER_STATES is None:
        assert mgpu.REGISTER_STATES_D_STATES == (1, 16)
        assert mgpu.resolve_register_states(None, 1) and mgpu.resolve_register_states(None, 16)
        assert not mgpu.resolve_register_states(None, 8) and not mgpu.resolve_register_states(None, 1, fused=True)
        assert mgpu.resolve_register_states(None, 1, fused=True, length=3136)
        assert mgpu.resolve_register_states(None, 16, fused=True, length=3136)
        assert not mgpu.resolve_register_states(None, 1, fused=True, length=784)
        assert not mgpu.resolve_register_states(None, 16, fused=True, length=784)
        # d_state 16 keeps its SMEM-bound backward tile: the plain scan's default comes from plan_tiles.
        if 16 not in mgpu.FAST_PLAN_D_STATES:
            assert mgpu.resolve_plain_bwd_seq_tile(None, 16, register_states=True) is None
    assert mgpu.resolve_register_states(True, 16, fused=True) and not mgpu.resolve_register_states(False, 1)
    assert mgpu.resolve_approx_math(None, 1) == mgpu.APPROX_MATH
    assert not mgpu.resolve_approx_math(None, 16) and mgpu.resolve_approx_math(True, 16)
    assert mgpu.resolve_direct_store(None, None, 1) == mgpu.DIRECT_STORE
    assert not mgpu.resolve_direct_store(None, None, 16) and mgpu.resolve_direct_store(True, None, 16)
    assert not mgpu.resolve_direct_store(False, None, 1)
    assert mgpu.resolve_direct_store(False, "interpreter", 16)  # the interpreter has only the direct path
    # The backward's own unroll: 4 at d_state 1 (GPU-tested), the forward's elsewhere; asked for, as asked.
    assert mgpu.resolve_bwd_unroll(None, 2, 1) == (mgpu.BWD_UNROLL or 4) and mgpu.resolve_bwd_unroll(3, 2, 1) == 3
    assert mgpu.resolve_bwd_unroll(None, 1, 16) == (mgpu.BWD_UNROLL or 1)


# ------------------------------------------------------------------------------------------------ emulated kernels

def _per_sequence(plan, u, dl, proj_arr, prm):
    """The kernels' inputs gathered per sequence g = (b, k), in walk order (reversed orders flipped along L)."""
    G, K, S, n, r = proj_arr.shape[0], plan.groups, plan.sources, plan.d_state, plan.rank
    ks = [g % K for g in range(G)]
    uu = u[jnp.array([(g // K) * S + plan.source[k] for g, k in enumerate(ks)])].astype(f32)     # (G, Lp, Dp)
    p = prm[jnp.array(ks)]                                                                       # (G, rows, Dp)
    proj = proj_arr.astype(f32)
    dlr = dl.astype(f32) if r == 0 else jnp.einsum("grl,grd->gld", proj[:, :r], p[:, 2 + n:])
    rev = jnp.array([plan.reverse[k] for k in ks])[:, None, None]
    flip = lambda x: jnp.where(rev, x[:, ::-1], x)  # noqa: E731 - along L, axis 1
    return flip, (flip(uu), flip(dlr), jnp.swapaxes(flip(jnp.swapaxes(proj[:, r:], 1, 2)), 1, 2),
                  p[:, 0], p[:, 1], p[:, 2:2 + n])


def _emulated_y(plan, flip, uu, dlr, bc, Dv, bias, A):
    """y (G, Lp, Dp) by position: the reference scan of each walk-ordered sequence, flipped back."""
    n = plan.d_state

    def one(u, dl, bc, D, b, a):  # u, dl (Lp, Dp); bc (2N, Lp); D, b (Dp,); a (N, Dp)
        y = selective_scan_reference(u.T[None], dl.T[None], a.T, bc[None, None, :n], bc[None, None, n:], D, b,
                                     plan.softplus)
        return y[0].T

    return flip(jax.vmap(one)(uu, dlr, bc, Dv, bias, A))


def emulated_forward(plan, u, dl, proj_arr, prm, *, save_states, h0=None):
    assert h0 is None, "the emulated kernels walk whole sequences (splits=1)"
    flip, seq = _per_sequence(plan, u, dl, proj_arr, prm)
    y = _emulated_y(plan, flip, *seq)
    tl = plan.tl_bwd if save_states else plan.tl_fwd
    hs = jnp.zeros((y.shape[0], y.shape[1] // tl, plan.d_state, y.shape[2]), f32) if save_states else None
    return y, hs


def emulated_backward(plan, u, dl, proj_arr, prm, hs, dy, dh0=None):
    """The backward kernel's outputs: du, ddl per sequence; dBC (G, 2N, Lp); dprm (G, 2+N+R, Dp), rows
    [dD, dbias, dA, dW]."""
    assert dh0 is None, "the emulated kernels walk whole sequences (splits=1)"
    flip, seq = _per_sequence(plan, u, dl, proj_arr, prm)
    _, vjp = jax.vjp(lambda *s: _emulated_y(plan, flip, *s), *seq)
    K, S = plan.groups, plan.sources
    dy = dy[jnp.array([(g // K) * S + plan.source[g % K] for g in range(proj_arr.shape[0])])]  # per source -> per order
    du, ddl, dbc, dD, dbias, dA = vjp(dy.astype(f32))
    dbc = jnp.swapaxes(flip(jnp.swapaxes(dbc, 1, 2)), 1, 2)
    ddl = flip(ddl)                                                    # (G, Lp, Dp) by position
    dW = jnp.einsum("gld,grl->grd", ddl, proj_arr[:, :plan.rank].astype(f32))     # dt_proj's weight, per sequence
    dprm = jnp.concatenate([dD[:, None], dbias[:, None], dA, dW], axis=1)
    G = ddl.shape[0]
    rows = sorted(range(G), key=lambda g: mgpu._ddl_row(plan, g, G))  # the kernel's row order for ddl
    ddl = ddl[jnp.array(rows)]
    return flip(du).astype(u.dtype), ddl.astype(u.dtype if dl is None else dl.dtype), dbc, dprm


@pytest.fixture
def emulated_kernels(monkeypatch):
    monkeypatch.setattr(mgpu, "_forward", emulated_forward)
    monkeypatch.setattr(mgpu, "_backward", emulated_backward)


def _check(fn, ref, args, names, fwd_tol=1e-5, grad_tol=1e-4):
    y, y_ref = fn(*args), ref(*args)
    assert y.shape == y_ref.shape and y.dtype == f32
    assert rel_err(y, y_ref) < fwd_tol, f"forward {rel_err(y, y_ref):.2e}"
    w = jax.random.normal(jax.random.PRNGKey(7), y_ref.shape)
    argnums = tuple(range(len(args)))
    g = jax.grad(lambda *a: jnp.sum(fn(*a) * w), argnums)(*args)
    g_ref = jax.grad(lambda *a: jnp.sum(ref(*a) * w), argnums)(*args)
    for name, gi, gr in zip(names, g, g_ref):
        assert gi.shape == gr.shape, name
        assert rel_err(gi, gr) < grad_tol, f"d{name}: {rel_err(gi, gr):.2e}"


@pytest.mark.parametrize("d_state", [16])  # d_state 1 also runs in the interpreter (test_mosaic_gpu_interpret.py)
def test_selective_scan_wrapper(emulated_kernels, d_state):
    """Channel-major <-> channel-minor layout, D padded 12 -> 128, L 37 -> two tiles, the (K, 2+N, Dp) tile."""
    args = make_inputs(1, batch=2, groups=2, per_group=12, d_state=d_state, length=37)
    _check(mgpu.selective_scan, selective_scan_reference, args, ("u", "delta", "A", "B", "C", "D", "delta_bias"))


# The interpreter test runs the real kernels for d_state 1 and 4 (all orders, reversed only); here the glue alone at
# the d_state and direction subsets it leaves out.
@pytest.mark.parametrize("d_state,directions,delta_in_kernel", [
    (16, (0, 1, 2, 3), True), (1, (1,), True), (16, (2, 3), True), (16, (0, 1, 2, 3), False), (1, (2, 3), False)],
    ids=["N16-all", "N1-column", "N16-reversed", "N16-all-delta-from-xla", "N1-reversed-delta-from-xla"])
def test_fused_core_wrapper(emulated_kernels, d_state, directions, delta_in_kernel):
    """Two sources (row- and column-major), reversed orders, low-rank delta (in the kernel, or from XLA per order),
    the merge; a non-square 3x5 map."""
    x, *params = make_core_inputs(2, 2, 3, 5, 12, d_state, 3, f32)
    k = len(directions)
    xw, dw, db, al, ds = params
    params = (xw[:k], dw[:k], db[:k], al[:k * 12], ds[:k * 12])  # the parameters of `directions` only
    _check(lambda *a: fused.ss2d_core(*a, directions=directions, delta_in_kernel=delta_in_kernel),
           lambda *a: ss2d_core_reference(*a, scan_implementation="xla", directions=directions),
           (x, *params), ("x", "x_proj_weight", "dt_projs_weight", "dt_projs_bias", "A_logs", "Ds"))


def test_fused_core_wrapper_check_can_fail(emulated_kernels, monkeypatch):
    """A plan that forgot to reverse orders 2 and 3 must fail the comparison."""
    x, *params = make_core_inputs(3, 1, 3, 5, 12, 1, 3, f32)
    real_plan = mgpu._Plan
    monkeypatch.setattr(mgpu, "_Plan", lambda **kw: real_plan(**{**kw, "reverse": (False,) * kw["groups"]}))
    y = fused.ss2d_core(x, *params)
    assert rel_err(y, ss2d_core_reference(x, *params, scan_implementation="xla")) > 1e-2


def _add_any_dtypes(jaxpr, size, found):
    """The output dtypes of the cotangent sums (add_any) of `size` elements in a jaxpr and its sub-jaxprs."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "add_any" and eqn.outvars[0].aval.size == size:
            found.append(eqn.outvars[0].aval.dtype)
        for sub in jaxprs_in_params(eqn.params):
            _add_any_dtypes(sub, size, found)
    return found


@pytest.mark.parametrize("delta_in_kernel", [True, False], ids=["delta-in-kernel", "delta-from-xla"])
def test_fused_core_sums_dx_in_f32(emulated_kernels, delta_in_kernel):
    """bf16 x: the partial dx of x_proj and of the two sources' du are added in f32 (summed in bf16, XLA's
    fusions decided the roundings: gpu_kernel_tests_h200_case8.json, 14x14x384 dx 5.1e-3 -> 1.01e-2)."""
    x, *params = make_core_inputs(4, 1, 3, 5, 12, 1, 3, jnp.bfloat16)
    loss = lambda x: jnp.sum(fused.ss2d_core(x, *params, delta_in_kernel=delta_in_kernel))  # noqa: E731
    dtypes = _add_any_dtypes(jax.make_jaxpr(jax.grad(loss))(x).jaxpr, x.size, [])
    assert len(dtypes) >= 2 and set(dtypes) == {jnp.dtype(f32)}, dtypes


# ------------------------------------------------------------------------------------------------ shard_map

SHARDED = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    import re, jax, jax.numpy as jnp
    from jax.sharding import AxisType, PartitionSpec as P
    from pallas_kernels.selective_scan import pallas_mosaic_gpu as mgpu
    from pallas_kernels.selective_scan.testing import rel_err
    from pallas_kernels.ss2d import pallas_mosaic_gpu as fused, ss2d_core_direction_parallel
    from tests.test_mosaic_gpu_wrappers import emulated_backward, emulated_forward
    from pallas_kernels.ss2d.testing import make_core_inputs

    data = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    data_dir = jax.make_mesh((2, 4), ("data", "dir"), axis_types=(AxisType.Auto,) * 2)

    def data_parallel(x, *p):
        return jax.shard_map(fused.ss2d_core, mesh=data, in_specs=(P("data"),) + (P(),) * 5, out_specs=P("data"),
                             check_vma=False)(x, *p)

    def direction_parallel(x, *p):
        core = lambda x, *p: ss2d_core_direction_parallel(x, *p, axis_name="dir", implementation="fused_mosaic_gpu")
        return jax.shard_map(core, mesh=data_dir, in_specs=(P("data"),) + (P("dir"),) * 5, out_specs=P("data"),
                             check_vma=False)(x, *p)

    def grad(fn):
        return jax.grad(lambda *a: jnp.sum(fn(*a) * jnp.cos(a[0].astype(jnp.float32))), tuple(range(6)))

    args = make_core_inputs(0, 8, 3, 5, 12, 1, 3, jnp.float32)
    shapes = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in args]
    for name, fn in (("data", data_parallel), ("data x dir", direction_parallel)):
        for f in (fn, grad(fn)):
            text = jax.export.export(jax.jit(f), platforms=["cuda"])(*shapes).mlir_module()
            assert "custom_call @mosaic_gpu" in text, name
        print("lowered", name)

    mgpu._forward, mgpu._backward = emulated_forward, emulated_backward
    want_y, want_g = fused.ss2d_core(*args), grad(fused.ss2d_core)(*args)
    for name, fn in (("data", data_parallel), ("data x dir", direction_parallel)):
        fn = lambda *a, fn=fn: fn(*a)  # a new function: jit's cache holds the traces with the real kernels
        err = max([rel_err(jax.jit(fn)(*args), want_y)] +
                  [rel_err(a, b) for a, b in zip(jax.jit(grad(fn))(*args), want_g)])
        assert err < 1e-5, (name, err)
        print("matches", name, err)
""")


def test_fused_core_under_shard_map():
    proc = subprocess.run([sys.executable, "-c", SHARDED], capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    for name in ("data", "data x dir"):
        assert f"lowered {name}" in proc.stdout and f"matches {name}" in proc.stdout, proc.stdout


# ------------------------------------------------------------------------------------------------ auto pick

def test_auto_on_hopper_picks_fused_core_only_for_verified_d_state(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(mgpu, "is_supported", lambda: True)
    monkeypatch.setattr(fused, "is_supported", lambda: True)
    assert ss2d_api.resolve_implementation(None, d_state=1) == "fused_mosaic_gpu"
    assert ss2d_api.resolve_implementation(None, d_state=16) == "fused_mosaic_gpu"  # 20/20 on the H200, 2026-12-01
    assert 4 not in fused.VERIFIED_D_STATES
    assert ss2d_api.resolve_implementation(None, d_state=4) == "pallas_mosaic_gpu"  # the scan composition
    assert scan_api.resolve_implementation(None) == "pallas_mosaic_gpu"
    assert ss2d_api.resolve_implementation("fused_mosaic_gpu") == "fused_mosaic_gpu"  # by name: any d_state
