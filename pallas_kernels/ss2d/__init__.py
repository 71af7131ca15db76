"""The SS2D core (cross-scan, selective scan, cross-merge): reference composition and fused kernels."""

from pallas_kernels.ss2d.api import implementations, resolve_implementation, ss2d_core  # noqa: F401
from pallas_kernels.ss2d.reference import cross_merge, cross_scan, ss2d_core_reference, ssm_inputs  # noqa: F401
