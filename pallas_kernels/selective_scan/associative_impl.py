"""Registry adapter for the chunked associative scan (runs everywhere)."""

from pallas_kernels.selective_scan.associative import selective_scan_associative as selective_scan  # noqa: F401


def is_supported() -> bool:
    return True
