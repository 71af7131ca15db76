"""The SS2D core (cross-scan, selective scan, cross-merge): reference composition and fused kernels."""

from pallas_kernels.ss2d.api import (  # noqa: F401
    implementations, resolve_implementation, ss2d_core, ss2d_core_direction_parallel)
from pallas_kernels.ss2d.reference import cross_merge, cross_scan, ss2d_core_reference, ssm_inputs  # noqa: F401
