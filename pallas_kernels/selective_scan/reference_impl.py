"""Registry adapter for the `lax.scan` reference (runs everywhere)."""

from pallas_kernels.selective_scan.reference import selective_scan_reference as selective_scan  # noqa: F401


def is_supported() -> bool:
    return True
