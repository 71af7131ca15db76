"""`selective_scan(..., implementation=)`: one entry point, several implementations (tokamax-style dispatch).

Implementations, each a module exposing `selective_scan(u, delta, A, B, C, D, delta_bias, delta_softplus)` with the
contract of `reference.selective_scan_reference`, and `is_supported() -> bool` for the current default backend:

| name                | where                        | notes                                                  |
|---------------------|------------------------------|--------------------------------------------------------|
| "xla"               | anywhere                     | `lax.scan`, the reference; slow on accelerators         |
| "associative"       | anywhere                     | chunked `lax.associative_scan`, memory bounded          |
| "pallas_mosaic_gpu" | Hopper GPUs (sm_90+)         | `plgpu.kernel` + `emit_pipeline`, custom_vjp            |
| "pallas_mosaic_tpu" | TPUs (interpret mode on CPU) | `pl.pallas_call` with a VMEM carry, custom_vjp          |

`implementation=None` or "auto" picks the first supported entry of `AUTO_ORDER[platform]` and logs the pick once.
"""

from __future__ import annotations

import importlib
import logging
from typing import Callable

import jax

logger = logging.getLogger("pallas_kernels")

_MODULES = {
    "xla": "pallas_kernels.selective_scan.reference_impl",
    "associative": "pallas_kernels.selective_scan.associative_impl",
    "pallas_mosaic_gpu": "pallas_kernels.selective_scan.pallas_mosaic_gpu",
    "pallas_mosaic_tpu": "pallas_kernels.selective_scan.pallas_mosaic_tpu",
}

AUTO_ORDER = {
    # pallas_mosaic_gpu passed benchmarks/gpu_kernel_tests.py in full (20/20: N 1/16, fp32/bf16, L 3136..37) on an
    # H200 (results/gpu_kernel_tests_h200.md); "is_supported" keeps it to Hopper and newer.
    "gpu": ("pallas_mosaic_gpu", "associative"),
    "tpu": ("pallas_mosaic_tpu", "associative"),
    "cpu": ("associative",),
}

IMPLEMENTATIONS = tuple(_MODULES)
_announced: set[tuple[str, str]] = set()


def _load(name: str):
    if name not in _MODULES:
        raise ValueError(f"selective_scan: unknown implementation {name!r}; choose one of {IMPLEMENTATIONS} or 'auto'")
    return importlib.import_module(_MODULES[name])


def available_implementations(platform: str | None = None) -> list[str]:
    """The implementations that run on `platform` (default: JAX's default backend), best first."""
    platform = platform or jax.default_backend()
    names = [n for n in AUTO_ORDER.get(platform, ("associative",))] + ["associative", "xla"]
    out = []
    for n in dict.fromkeys(names):
        try:
            if _load(n).is_supported():
                out.append(n)
        except ImportError:
            continue
    return out


def resolve_implementation(implementation: str | None = None) -> str:
    """Maps None/"auto" to a concrete implementation for the default backend; validates explicit names."""
    if implementation not in (None, "auto"):
        _load(implementation)
        return implementation
    platform = jax.default_backend()
    picked = available_implementations(platform)[0]
    if (platform, picked) not in _announced:
        _announced.add((platform, picked))
        logger.info("selective_scan: implementation='auto' picked %r on %s", picked, platform)
    return picked


def get_implementation(implementation: str | None = None) -> Callable:
    return _load(resolve_implementation(implementation)).selective_scan


def selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, *, implementation=None):
    """The selective scan (S6) with the official op's shapes and grouping.

    Args:
      u, delta: (batch, K*D, L), any float dtype (bf16 or fp32).
      A: (K*D, N) fp32 (negative: A = -exp(A_logs)).
      B, C: (batch, K, N, L): shared by the D channels of each of the K groups.
      D, delta_bias: optional (K*D,) fp32.
      delta_softplus: apply softplus (official threshold 20) to delta + delta_bias.
      implementation: None/"auto", or one of `IMPLEMENTATIONS`.
    Returns:
      y: (batch, K*D, L) float32, whatever the input dtype (the math is fp32 throughout).
    """
    fn = get_implementation(implementation)
    return fn(u, delta, A, B, C, D, delta_bias, delta_softplus)
