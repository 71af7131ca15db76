"""Shared test fixtures. The golden outputs of the official PyTorch models live in ../shared/parity (never copied
into the repo); a missing directory is an error, not a skip, so CI cannot pass without checking parity."""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pytest

# CPU tests are compile-bound (tiny inputs, many programs), and LLVM's optimisation passes are most of XLA:CPU's
# compile time: without them the slow model tests take 2.2x less (91 -> 41 s for three of test_models). The HLO, and
# so what is computed, is the same; only the machine code is less optimised. Subprocesses inherit it (tests that add
# a device count append to XLA_FLAGS).
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
if TEST_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()

REPO = pathlib.Path(__file__).resolve().parents[1]
PARITY_DIR = pathlib.Path(os.environ.get("VMAMBA_PARITY_DIR", REPO.parent / "shared" / "parity"))


def load_parity(name: str) -> tuple[dict, dict]:
    """(npz arrays, json metadata) of a golden fixture, e.g. 'vmamba_v3_small'."""
    npz, meta = PARITY_DIR / f"{name}.npz", PARITY_DIR / f"{name}.json"
    if not npz.exists():
        raise FileNotFoundError(f"parity fixture {npz} not found: tests expect ../shared/parity beside the repo "
                                "(or set VMAMBA_PARITY_DIR)")
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, json.loads(meta.read_text())


def official_kwargs(meta: dict) -> dict:
    """The fixture's official VSSM(...) kwargs with lists made hashable for flax dataclass fields."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in meta["kwargs"].items()}


def rel_err(a, b) -> float:
    """max |a - b| / max |b| (0 when both are zero)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = np.abs(b).max()
    return float(np.abs(a - b).max() / scale) if scale > 0 else float(np.abs(a).max())


@pytest.fixture(scope="session")
def official_shapes() -> dict:
    path = PARITY_DIR / "official_state_dict_shapes.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: tests expect ../shared/parity beside the repo")
    return json.loads(path.read_text())
