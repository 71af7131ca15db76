"""Selective scan (S6): XLA reference, chunked associative scan and Pallas kernels behind one API."""

from pallas_kernels.selective_scan.api import (  # noqa: F401
    IMPLEMENTATIONS,
    available_implementations,
    resolve_implementation,
    selective_scan,
)
from pallas_kernels.selective_scan.reference import selective_scan_reference, softplus  # noqa: F401
from pallas_kernels.selective_scan.associative import selective_scan_associative  # noqa: F401
