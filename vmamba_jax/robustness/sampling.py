"""How a transformation's magnitude table entry becomes one value per image."""

from __future__ import annotations

import numpy as np


def uniform(rng: np.random.Generator, r) -> float:
    """A (lo, hi) range -> one draw from U(lo, hi); a number -> itself (a fixed magnitude draws nothing)."""
    return float(rng.uniform(*r)) if isinstance(r, (tuple, list)) else float(r)
