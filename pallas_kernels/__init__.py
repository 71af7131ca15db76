"""Pallas kernels for vmamba-jax: the selective scan (S6) and, later, the fused SS2D core."""

from pallas_kernels.selective_scan import (  # noqa: F401
    IMPLEMENTATIONS,
    available_implementations,
    resolve_implementation,
    selective_scan,
)
