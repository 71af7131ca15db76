"""The robustness suite: 20 seeded, deterministic image transformations (imgaug semantics, magnitudes in
`table.py`) and the runner that evaluates several models on the same transformed images (`suite.py`)."""

from vmamba_jax.robustness.table import CLEAN, TRANSFORM_IDS, TRANSFORMS, apply, rng_for, select  # noqa: F401
