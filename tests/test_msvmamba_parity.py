"""Golden-output parity with the official PyTorch MSVMamba (YuHengsss/MSVMamba; random weights, 64x96 input, fp32).

Fixtures (../shared/parity, see spec derivatives.md "MSVMamba parity fixtures"): master's Nano config reduced to dims
32 / depths [1,1,2,1] (`msvmamba_v1_small`), and the v2 branch's MSVMambav3-Tiny reduced the same way, without
(`msvmamba_v3_small`, vms_noz) and with (`msvmamba_v3_gated_small`, vms) the SiLU(z) gate. At this init the scans
barely move the logits (dt ~ 0.01), so the gradients are what catch scan bugs (route order, state reset at the
low-res route boundaries, parameter-set order): every gradient tensor is checked against its own max-abs value.

The state_dicts go through the strict converter, so these tests also pin the key mapping of the MSVMamba modules.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vmamba_jax
from tests.conftest import PARITY_DIR, load_parity, rel_err
from vmamba_jax.convert import CheckpointMismatchError, expected_state_dict_shapes, load_torch_checkpoint, \
    to_torch_state_dict
from vmamba_jax.models import get_entry

FEAT_ATOL = 1e-5   # issue bar for logits and stage outputs (absolute); observed <= 7e-6
GRAD_TOL = 1e-4    # issue bar, relative to each tensor's max-abs; observed <= 1.1e-5

# fixture -> (registered model whose recipe the fixture reduces, overrides beyond the reduction)
FIXTURES = {
    "msvmamba_v1_small": ("msvmamba_nano", {}),
    "msvmamba_v3_small": ("msvmamba_v3_tiny", {}),
    "msvmamba_v3_gated_small": ("msvmamba_v3_tiny", {"forward_type": "vms"}),
}
# registered model -> key in msvmamba_official_state_dict_shapes.json
RELEASED = {
    "msvmamba_nano": "msvmamba_nano", "msvmamba_micro": "msvmamba_micro", "msvmamba_tiny": "msvmamba_tiny",
    "msvmamba_v3_tiny": "msvmambav3_tiny", "msvmamba_v3_small": "msvmambav3_small",
    "msvmamba_v3_base": "msvmambav3_base",
}


def fixture_model(name: str, **kw):
    """The registered model reduced to the fixture's official kwargs (dims, depths, classes, no drop path)."""
    _, meta = load_parity(name)
    base, overrides = FIXTURES[name]
    k = meta["kwargs"]
    return vmamba_jax.create_model(base, dims=k["dims"], depths=tuple(k["depths"]), num_classes=k["num_classes"],
                                   drop_path_rate=0.0, **overrides, **kw)


def state_dict_of(arrays: dict) -> dict:
    return {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}


# A fixture's logits and gradient tests share one cached run: `--dist loadgroup` keeps them on one xdist worker.
GROUPED = [pytest.param(name, marks=pytest.mark.xdist_group(name)) for name in FIXTURES]


@functools.lru_cache(maxsize=None)
def _run(name: str):
    # The lax.scan reference compiles much faster on CPU than the chunked associative scan; the scan
    # implementations are checked against each other in tests/test_selective_scan*.py and tests/test_msvmamba.py.
    arrays, meta = load_parity(name)
    model = fixture_model(name, scan_implementation="xla")
    variables = load_torch_checkpoint(state_dict_of(arrays), model)
    x, probe = jnp.asarray(arrays["input"]), jnp.asarray(arrays["probe"])

    def loss(params):
        logits, state = model.apply({"params": params}, x, mutable=["intermediates"])
        return jnp.sum(logits * probe), (logits, state["intermediates"])

    (_, (logits, inter)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
    feats = {int(k.split(".")[1]): np.asarray(v[0]) for k, v in inter.items()}
    return arrays, meta, variables, np.asarray(logits), feats, to_torch_state_dict(grads)


@pytest.mark.slow
@pytest.mark.parametrize("name", GROUPED)
def test_logits_and_stage_outputs(name):
    arrays, meta, variables, logits, feats, _ = _run(name)
    assert vmamba_jax.count_params(variables) == meta["n_params"]
    assert logits.shape == arrays["logits"].shape
    np.testing.assert_allclose(logits, arrays["logits"], rtol=0, atol=FEAT_ATOL)
    for i in range(len(meta["kwargs"]["depths"])):
        assert feats[i].shape == arrays[f"feat/{i}"].shape, i
        np.testing.assert_allclose(feats[i], arrays[f"feat/{i}"], rtol=0, atol=FEAT_ATOL, err_msg=f"stage {i}")


@pytest.mark.slow
@pytest.mark.parametrize("name", GROUPED)
def test_parameter_gradients(name):
    arrays, _, _, _, _, grads = _run(name)
    expected = {k[len("grad/"):]: v for k, v in arrays.items() if k.startswith("grad/")}
    assert set(grads) == set(expected)
    errors = {k: rel_err(grads[k], expected[k]) for k in expected}
    bad = {k: f"{e:.2e}" for k, e in errors.items() if not e < GRAD_TOL}
    assert not bad, bad


@pytest.mark.slow
def test_exact_round_trip_and_named_errors():
    arrays, meta = load_parity("msvmamba_v1_small")
    state_dict = state_dict_of(arrays)
    model = fixture_model("msvmamba_v1_small")
    variables = load_torch_checkpoint(state_dict, model)
    back = to_torch_state_dict(variables)
    assert set(back) == set(state_dict)
    for k, v in state_dict.items():
        np.testing.assert_array_equal(back[k], v, err_msg=k)

    # A missing key and a mis-shaped key are reported by name. (One case only: every mismatch also tries to name a
    # matching registered model, which abstractly builds all of them.)
    broken = dict(state_dict)
    del broken["layers.0.blocks.0.op.conv2d_b1.weight"]
    broken["layers.1.blocks.0.convFFN.linear1.weight"] = np.zeros((1, 1, 1, 1), np.float32)
    with pytest.raises(CheckpointMismatchError) as err:
        load_torch_checkpoint(broken, model)
    assert "layers.0.blocks.0.op.conv2d_b1.weight" in str(err.value)
    assert "layers.1.blocks.0.convFFN.linear1.weight" in str(err.value)


@pytest.fixture(scope="module")
def msvmamba_official_shapes() -> dict:
    import json
    return json.loads((PARITY_DIR / "msvmamba_official_state_dict_shapes.json").read_text())


@pytest.mark.parametrize("name", list(RELEASED))
def test_param_count_and_keys_equal_the_official(name, msvmamba_official_shapes):
    official = msvmamba_official_shapes[RELEASED[name]]
    shapes = expected_state_dict_shapes(vmamba_jax.create_model(name))   # abstract init (jax.eval_shape)
    assert {k: list(v) for k, v in shapes.items()} == official["state_dict"]
    assert sum(math.prod(s) for s in shapes.values()) == official["n_params"] == get_entry(name).params


@pytest.mark.parametrize("name", list(RELEASED))
def test_converts_from_a_zero_state_dict_of_official_shapes(name, msvmamba_official_shapes):
    official = msvmamba_official_shapes[RELEASED[name]]
    state_dict = {k: np.zeros(s, np.float32) for k, s in official["state_dict"].items()}
    variables = load_torch_checkpoint(state_dict, vmamba_jax.create_model(name))
    assert vmamba_jax.count_params(variables) == official["n_params"]
    assert all(not np.any(np.asarray(x)) for x in jax.tree_util.tree_leaves(variables))
