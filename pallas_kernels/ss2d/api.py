"""`ss2d_core(..., implementation=)`: the SS2D core behind one knob.

`implementation` is either a fused SS2D kernel (a module in `_FUSED` exposing `ss2d_core(...)` and `is_supported()`),
or the name of a selective-scan implementation ("xla", "associative", "pallas_mosaic_gpu", "pallas_mosaic_tpu"), in
which case the core is the reference composition (cross-scan, selective scan, cross-merge) with that scan.
None/"auto" prefers a supported fused kernel for the platform, else the selective scan's own "auto" pick.
"""

from __future__ import annotations

import functools
import importlib
import logging

import jax

from pallas_kernels.selective_scan import IMPLEMENTATIONS as SCAN_IMPLEMENTATIONS
from pallas_kernels.selective_scan import resolve_implementation as resolve_scan_implementation
from pallas_kernels.ss2d.reference import ALL_DIRECTIONS, ss2d_core_reference

logger = logging.getLogger("pallas_kernels")

_FUSED: dict[str, str] = {  # name -> module path
    "fused_mosaic_tpu": "pallas_kernels.ss2d.pallas_mosaic_tpu",
    "fused_mosaic_gpu": "pallas_kernels.ss2d.pallas_mosaic_gpu",
}
# "auto" picks only fused kernels verified on the hardware itself, and only for the d_states a module lists in
# VERIFIED_D_STATES. fused_mosaic_tpu is so far verified in Pallas' interpreter only (tests/test_ss2d_fused.py), and
# its whole-image VMEM blocks bound the input size, so on a TPU it is opt-in by name until it has run on one (and
# learnt to fall back above that size). fused_mosaic_gpu passed its GPU test for d_state 1 (the v2 models) and
# 16 (v0, Res-VMamba; benchmarks/results/gpu_kernel_tests_h200.md).
AUTO_ORDER = {"gpu": ("fused_mosaic_gpu",), "tpu": (), "cpu": ()}
_announced: set[tuple[str, str]] = set()


def implementations() -> tuple[str, ...]:
    return tuple(_FUSED) + tuple(SCAN_IMPLEMENTATIONS)


def resolve_implementation(implementation: str | None = None, d_state: int | None = None) -> str:
    """A concrete implementation name; None/"auto" picks the first verified fused core of the platform (for this
    d_state, when given), else the selective scan's own auto pick."""
    if implementation not in (None, "auto"):
        if implementation not in implementations():
            raise ValueError(f"ss2d_core: unknown implementation {implementation!r}; choose one of "
                             f"{implementations()} or 'auto'")
        return implementation
    platform = jax.default_backend()
    picked = None
    for name in AUTO_ORDER.get(platform, ()):
        try:
            mod = importlib.import_module(_FUSED[name])
        except ImportError:
            continue
        verified = getattr(mod, "VERIFIED_D_STATES", None)
        if mod.is_supported() and (d_state is None or verified is None or d_state in verified):
            picked = name
            break
    picked = picked or resolve_scan_implementation(None)
    if (platform, picked) not in _announced:
        _announced.add((platform, picked))
        logger.info("ss2d_core: implementation='auto' picked %r on %s", picked, platform)
    return picked


def ss2d_core(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, *, implementation=None,
              directions: tuple[int, ...] = ALL_DIRECTIONS):
    """Cross-scan + selective scan + cross-merge of x (B, H, W, D); returns y (B, H, W, D) fp32 (see reference.py).
    `directions` names the scan orders the parameters belong to (default all four)."""
    name = resolve_implementation(implementation, d_state=A_logs.shape[-1])
    if name in _FUSED:
        fn = importlib.import_module(_FUSED[name]).ss2d_core
        return fn(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, directions=directions)
    return ss2d_core_reference(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds,
                               scan_implementation=name, directions=directions)


def ss2d_core_direction_parallel(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, *, axis_name: str,
                                 implementation=None):
    """Direction parallelism, for use inside `jax.shard_map`: the K = 4 scan orders split over mesh axis `axis_name`.

    Each device holds the full x and its K/n directions' slice of every parameter (x_proj_weight, dt_projs_weight,
    dt_projs_bias sharded on their leading K axis; A_logs and Ds on their K*D axis), computes the merged sum of its
    own orders, and the parts are summed over the axis. The orders are static per kernel, so the n variants are
    compiled and `lax.switch` on the device's axis index picks its own.
    """
    n = jax.lax.psum(1, axis_name)
    if len(ALL_DIRECTIONS) % n:
        raise ValueError(f"ss2d_core_direction_parallel: {len(ALL_DIRECTIONS)} directions do not split over "
                         f"{n} devices on axis {axis_name!r}; use 1, 2 or 4")
    per = len(ALL_DIRECTIONS) // n
    branches = [functools.partial(ss2d_core, implementation=implementation,
                                  directions=ALL_DIRECTIONS[i * per:(i + 1) * per]) for i in range(n)]
    args = (x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds)
    part = jax.lax.switch(jax.lax.axis_index(axis_name), [lambda a, f=f: f(*a) for f in branches], args)
    return jax.lax.psum(part, axis_name)
