"""The Mosaic GPU kernels themselves, on the CPU, in Pallas' Mosaic GPU interpreter.

The interpreter simulates the warpgroup's threads, SMEM, barriers and TMA copies, so this runs the kernel bodies of
`pallas_kernels.selective_scan.pallas_mosaic_gpu` (the plain scan) and of the fused SS2D core: the time loops, the
boundary states, the backward's recompute and adjoint walk, the dB/dC row sums, reversed walks, two sources and the
in-kernel low-rank delta. It runs their `direct_store` path (the interpreter has no predicated TMA stores, which the
SMEM-staged outputs use); the compiled kernels are checked on a GPU by benchmarks/gpu_kernel_tests.py.

Shapes are tiny (the interpreter is slow) but cover several sequence tiles, channel padding (8 -> 128 lanes), an odd
non-square map, d_state 1 and 4, fp32 and bf16. Tolerances as in tests/test_ss2d_fused.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from pallas_kernels.selective_scan import pallas_mosaic_gpu as mgpu
from pallas_kernels.selective_scan.reference import selective_scan_reference
from pallas_kernels.selective_scan.testing import make_inputs, mosaic_gpu_interpreter, rel_err
from pallas_kernels.ss2d import pallas_mosaic_gpu as fused
from pallas_kernels.ss2d.reference import ss2d_core_reference
from pallas_kernels.ss2d.testing import make_core_inputs

TOL = {jnp.float32: (1e-5, 1e-4), jnp.bfloat16: (2e-2, 2e-2)}
TILES = dict(seq_tile=8, bwd_seq_tile=8)


def _check(fn, ref, args, dtype, names):
    fwd_tol, grad_tol = TOL[dtype]
    y, y_ref = fn(*args), ref(*args)
    assert y.shape == y_ref.shape and y.dtype == jnp.float32
    assert rel_err(y, y_ref) < fwd_tol, f"forward {rel_err(y, y_ref):.2e}"
    w = jax.random.normal(jax.random.PRNGKey(5), y_ref.shape)
    argnums = tuple(range(len(args)))
    g = jax.grad(lambda *a: jnp.sum(fn(*a) * w), argnums)(*args)
    g_ref = jax.grad(lambda *a: jnp.sum(ref(*a) * w), argnums)(*args)
    for name, gi, gr, a in zip(names, g, g_ref, args):
        assert gi.shape == a.shape and gi.dtype == a.dtype, name
        assert rel_err(gi, gr) < grad_tol, f"d{name}: {rel_err(gi, gr):.2e}"


@pytest.mark.parametrize("d_state,dtype", [(1, jnp.float32), (4, jnp.float32), (1, jnp.bfloat16)],
                         ids=["N1-fp32", "N4-fp32", "N1-bf16"])
def test_scan_kernel_in_interpreter(d_state, dtype):
    """Two groups of 8 channels, L = 37 over five 8-step tiles (the last one padded)."""
    args = make_inputs(11, batch=1, groups=2, per_group=8, d_state=d_state, length=37, dtype=dtype)
    kernel = lambda *a: mgpu.selective_scan(*a, **TILES, interpret=mosaic_gpu_interpreter())  # noqa: E731
    _check(kernel, selective_scan_reference, args, dtype, ("u", "delta", "A", "B", "C", "D", "delta_bias"))


@pytest.mark.parametrize("d_state,dtype,directions,delta_in_kernel", [
    (1, jnp.float32, (0, 1, 2, 3), True), (4, jnp.float32, (0, 1, 2, 3), True), (1, jnp.bfloat16, (0, 1, 2, 3), True),
    (1, jnp.float32, (2, 3), True), (4, jnp.float32, (0, 1, 2, 3), False)],
    ids=["N1-fp32", "N4-fp32", "N1-bf16", "reversed-only", "N4-fp32-delta-from-xla"])
def test_fused_core_kernel_in_interpreter(d_state, dtype, directions, delta_in_kernel):
    """A 3x5 map (15 steps over two tiles in either order), 8 channels, rank 2; delta formed in the kernel from the
    low-rank dts, or by XLA per order and read by the kernel (`delta_in_kernel=False`)."""
    x, *params = make_core_inputs(12, 1, 3, 5, 8, d_state, 2, dtype)
    k = len(directions)
    params = [params[0][:k], params[1][:k], params[2][:k], params[3][:k * 8], params[4][:k * 8]]
    kernel = lambda *a: fused.ss2d_core(*a, directions=directions, delta_in_kernel=delta_in_kernel,  # noqa: E731
                                        **TILES, interpret=mosaic_gpu_interpreter())
    ref = lambda *a: ss2d_core_reference(*a, scan_implementation="xla", directions=directions)  # noqa: E731
    _check(kernel, ref, (x, *params), dtype,
           ("x", "x_proj_weight", "dt_projs_weight", "dt_projs_bias", "A_logs", "Ds"))


def _check_op(op, plan, seed, d_state, dtype):
    """The plain scan (1 x 2 groups x 8 channels, L 37) or the fused core (5x7 map, 8 channels, dt rank 2) with
    kernel knobs `plan`, against the XLA reference, forward and every gradient."""
    if op == "scan":
        args = make_inputs(seed, batch=1, groups=2, per_group=8, d_state=d_state, length=37, dtype=dtype)
        _check(lambda *a: mgpu.selective_scan(*a, **plan), selective_scan_reference, args, dtype,
               ("u", "delta", "A", "B", "C", "D", "delta_bias"))
        return
    x, *params = make_core_inputs(seed, 1, 5, 7, 8, d_state, 2, dtype)
    ref = lambda *a: ss2d_core_reference(*a, scan_implementation="xla")  # noqa: E731
    _check(lambda *a: fused.ss2d_core(*a, **plan), ref, (x, *params), dtype,
           ("x", "x_proj_weight", "dt_projs_weight", "dt_projs_bias", "A_logs", "Ds"))


@pytest.mark.parametrize("op,d_state,dtype,delta_in_kernel", [
    ("scan", 1, jnp.float32, None), ("fused", 1, jnp.bfloat16, True), ("fused", 2, jnp.float32, False)],
    ids=["scan-N1-fp32", "fused-N1-bf16", "fused-N2-fp32-delta-from-xla"])
def test_split_walks_in_interpreter(op, d_state, dtype, delta_in_kernel):
    """The walk cut into 3 splits of three 4-step tiles (`splits`): the split-summary kernel, XLA's chain of the
    splits' entering states and adjoint carries, and the scan kernels started from them, forward and backward (on a
    5x7 map the reversed orders' padding fills the start of their first split)."""
    plan = dict(seq_tile=4, bwd_seq_tile=4, splits=3, interpret=mosaic_gpu_interpreter())
    _check_op(op, plan | ({} if op == "scan" else dict(delta_in_kernel=delta_in_kernel)), 11, d_state, dtype)


@pytest.mark.parametrize("op,d_state,dtype", [
    ("scan", 1, jnp.float32), ("fused", 2, jnp.bfloat16)], ids=["scan-N1-fp32", "fused-N2-bf16"])
def test_dbc_by_xla_in_interpreter(op, d_state, dtype):
    """The backward's dB / dC from per-channel products the kernel writes and XLA sums (`dbc_by_xla`), which the
    gradients of B, C (the plain scan) and of x_proj's weight (the fused core) take."""
    _check_op(op, dict(seq_tile=4, bwd_seq_tile=4, dbc_by_xla=True, interpret=mosaic_gpu_interpreter()), 14,
              d_state, dtype)


@pytest.mark.parametrize("op,d_state,dtype,delta_in_kernel", [
    ("scan", 1, jnp.float32, None), ("fused", 2, jnp.bfloat16, True), ("fused", 1, jnp.float32, False)],
    ids=["scan-N1-fp32", "fused-N2-bf16", "fused-N1-fp32-delta-from-xla"])
def test_cache_steps_in_interpreter(op, d_state, dtype, delta_in_kernel):
    """The backward's adjoint loop on the delta, softplus' derivative and decays its recompute loop kept in SMEM
    (`cache_steps`), walk-step indexed, in reversed orders too: every gradient."""
    plan = dict(seq_tile=4, bwd_seq_tile=4, cache_steps=True, interpret=mosaic_gpu_interpreter())
    _check_op(op, plan | ({} if op == "scan" else dict(delta_in_kernel=delta_in_kernel)), 15, d_state, dtype)


@pytest.mark.parametrize("op,d_state,dtype,delta_in_kernel", [
    ("scan", 1, jnp.float32, None), ("fused", 2, jnp.bfloat16, True), ("fused", 1, jnp.float32, False)],
    ids=["scan-N1-fp32", "fused-N2-bf16", "fused-N1-fp32-delta-from-xla"])
def test_register_states_in_interpreter(op, d_state, dtype, delta_in_kernel):
    """The backward's recomputed states of a tile held as values (`register_states`: both loops unrolled whole, no
    SMEM state tile), in reversed orders too: every gradient."""
    plan = dict(seq_tile=4, bwd_seq_tile=4, register_states=True, interpret=mosaic_gpu_interpreter())
    _check_op(op, plan | ({} if op == "scan" else dict(delta_in_kernel=delta_in_kernel)), 16, d_state, dtype)


@pytest.mark.parametrize("d_state,dtype,pixel_outputs", [(1, jnp.bfloat16, False), (2, jnp.bfloat16, True)],
                         ids=["N1-bf16", "N2-bf16-pixel-outputs"])
def test_y_in_compute_dtype_in_interpreter(monkeypatch, d_state, dtype, pixel_outputs):
    """Each order's y stored in bf16 by the kernel and summed over the orders in f32, and the backward kernel reading
    its cotangent dy in bf16 (`y_in_compute_dtype`), by position per source or (pixel_outputs) by row-major pixel:
    y and every gradient within the bf16 tolerance."""
    stored, read, forward, backward = [], [], mgpu._forward, mgpu._backward

    def spy_forward(plan, *args, **kwargs):  # the dtype the forward kernel stores y in
        out = forward(plan, *args, **kwargs)
        stored.append(out[0].dtype)
        return out

    def spy_backward(plan, u, dl, proj_arr, prm, hs, dy, dh0=None):  # the dtype the backward kernel reads dy in
        read.append(dy.dtype)
        return backward(plan, u, dl, proj_arr, prm, hs, dy, dh0)

    monkeypatch.setattr(mgpu, "_forward", spy_forward)
    monkeypatch.setattr(mgpu, "_backward", spy_backward)
    plan = dict(seq_tile=4, bwd_seq_tile=4, y_in_compute_dtype=True, pixel_outputs=pixel_outputs,
                direct_store=True, interpret=mosaic_gpu_interpreter())
    _check_op("fused", plan, 17, d_state, dtype)
    assert stored and set(stored) == {jnp.dtype(jnp.bfloat16)}, stored
    assert read and set(read) == {jnp.dtype(jnp.bfloat16)}, read


@pytest.mark.parametrize("d_state,dtype,merge_in_kernel,delta_in_kernel", [
    (1, jnp.float32, False, True), (2, jnp.bfloat16, True, True), (1, jnp.float32, True, False)],
    ids=["N1-fp32", "N2-bf16-merged", "N1-fp32-merged-delta-from-xla"])
def test_static_orders_in_interpreter(d_state, dtype, merge_in_kernel, delta_in_kernel):
    """Each block running the branch compiled for its own order (`static_orders`: the walk direction and, merged,
    the source layout as constants), forward and backward, every gradient; the backward's loops fully unrolled
    (`bwd_unroll` = its tile) where the forward's are not."""
    plan = dict(seq_tile=4, bwd_seq_tile=4, unroll=1, bwd_unroll=4, static_orders=True, merge_in_kernel=merge_in_kernel,
                delta_in_kernel=delta_in_kernel, interpret=mosaic_gpu_interpreter())
    _check_op("fused", plan, 16, d_state, dtype)


def test_static_orders_check_can_fail(monkeypatch):
    """A branch that walks its order the wrong way must fail: every order compiled as walking forwards."""
    x, *params = make_core_inputs(16, 1, 5, 7, 8, 1, 2, jnp.float32)
    real = mgpu._order_branches
    monkeypatch.setattr(mgpu, "_order_branches",
                        lambda plan, k: [(pred, False, col) for pred, _, col in real(plan, k)])
    y = fused.ss2d_core(x, *params, seq_tile=4, bwd_seq_tile=4, static_orders=True,
                        interpret=mosaic_gpu_interpreter())
    assert rel_err(y, ss2d_core_reference(x, *params, scan_implementation="xla")) > 1e-2


@pytest.mark.parametrize("knob", ["merge_in_kernel", "pixel_outputs"])
@pytest.mark.parametrize("d_state,dtype,directions", [
    (1, jnp.float32, (0, 1, 2, 3)), (2, jnp.bfloat16, (0, 1, 2, 3)), (1, jnp.float32, (1, 3))],
    ids=["N1-fp32", "N2-bf16", "column-major-only"])
def test_merge_in_kernel_in_interpreter(d_state, dtype, directions, knob):
    """The orders' outputs, and in the backward their du, by row-major pixel: added into one array by the kernel
    (`merge_in_kernel`) or stored per order at their pixels and summed by XLA (`pixel_outputs`), dy read per source;
    the column-major orders' positions mapped to their pixels on a 5x7 map, padded steps included; with only
    column-major orders the kernel's one source is the transposed image."""
    if directions == (0, 1, 2, 3):
        _check_op("fused", {"seq_tile": 4, "bwd_seq_tile": 4, knob: True, "interpret": mosaic_gpu_interpreter()},
                  15, d_state, dtype)
        return
    x, *params = make_core_inputs(15, 1, 5, 7, 8, d_state, 2, dtype)
    k = len(directions)
    params = [params[0][:k], params[1][:k], params[2][:k], params[3][:k * 8], params[4][:k * 8]]
    kernel = lambda *a: fused.ss2d_core(*a, directions=directions, seq_tile=4, bwd_seq_tile=4,  # noqa: E731
                                        **{knob: True}, interpret=mosaic_gpu_interpreter())
    ref = lambda *a: ss2d_core_reference(*a, scan_implementation="xla", directions=directions)  # noqa: E731
    _check(kernel, ref, (x, *params), dtype, ("x", "x_proj_weight", "dt_projs_weight", "dt_projs_bias", "A_logs", "Ds"))


@pytest.mark.parametrize("knob", ["merge_in_kernel", "pixel_outputs"])
def test_merge_in_kernel_check_can_fail(monkeypatch, knob):
    """The column-major orders added (or stored) at their source positions instead of their pixels must fail."""
    x, *params = make_core_inputs(15, 1, 5, 7, 8, 1, 2, jnp.float32)
    monkeypatch.setattr(mgpu, "_merged_row", lambda plan, col_major, q: q)
    y = fused.ss2d_core(x, *params, seq_tile=4, bwd_seq_tile=4, **{knob: True},
                        interpret=mosaic_gpu_interpreter())
    assert rel_err(y, ss2d_core_reference(x, *params, scan_implementation="xla")) > 1e-2


def test_split_walk_check_can_fail(monkeypatch):
    """Splits started from zero states instead of their chained ones (`_split_boundaries`) must fail."""
    x, *params = make_core_inputs(12, 1, 5, 7, 8, 1, 2, jnp.float32)
    real = mgpu._split_boundaries
    monkeypatch.setattr(mgpu, "_split_boundaries", lambda plan, s, prm, *, adjoint: jnp.zeros_like(
        real(plan, s, prm, adjoint=adjoint)))
    y = fused.ss2d_core(x, *params, seq_tile=4, bwd_seq_tile=4, splits=3, interpret=mosaic_gpu_interpreter())
    assert rel_err(y, ss2d_core_reference(x, *params, scan_implementation="xla")) > 1e-2


def test_interpreted_kernel_check_can_fail(monkeypatch):
    """The kernel with its in-tile reversal broken (reversed orders walk each tile forwards) must fail."""
    x, *params = make_core_inputs(13, 1, 3, 5, 8, 1, 2, jnp.float32)
    real_walk = mgpu._walk
    monkeypatch.setattr(mgpu, "_walk", lambda rev, i, n: i if n == 8 else real_walk(rev, i, n))  # tiles are 8 steps
    y = fused.ss2d_core(x, *params, **TILES, interpret=mosaic_gpu_interpreter())
    assert rel_err(y, ss2d_core_reference(x, *params, scan_implementation="xla")) > 1e-2


def test_large_boundary_states_are_recomputed_not_saved():
    """N = 16 at its backward tile of 4 would save states 4x y's size per layer (Res-VMamba-S asked for 99 GiB):
    the training forward then saves none and the backward recomputes them; N = 1 at tile 32 still saves them. The
    N = 4 interpreter cases above (tile 8) run the recompute path, the N = 1 cases the saved one."""
    plan = lambda n, tl: mgpu._Plan(groups=1, source=(0,), reverse=(False,), rank=0, d_state=n,  # noqa: E731
                                    tl_fwd=tl, tl_bwd=tl, softplus=True)
    assert mgpu.saves_states(plan(1, 32)) and mgpu.saves_states(plan(1, 8))
    assert not mgpu.saves_states(plan(16, 4)) and not mgpu.saves_states(plan(4, 8))
    args = make_inputs(3, batch=1, groups=1, per_group=8, d_state=4, length=20, dtype=jnp.float32)
    kernel = lambda *a: mgpu.selective_scan(*a, **TILES, interpret=mosaic_gpu_interpreter())  # noqa: E731
    _, vjp = jax.vjp(kernel, *args)
    residual_shapes = [leaf.shape for leaf in jax.tree_util.tree_leaves(vjp)]
    assert not any(len(s) == 4 and s[2] == 4 for s in residual_shapes), residual_shapes  # no (G, tiles, N, Dp)
