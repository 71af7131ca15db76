"""ConvNeXt and Swin baselines: parity with timm from the committed artifact (generated on the GPU machine by
benchmarks/timm_parity.py: timm state_dicts, inputs and logits of narrow variants), parameter counts of the released
variants, the strict converter (timm buffers dropped), and Swin's window rules."""

from __future__ import annotations

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vmamba_jax.convert import CheckpointMismatchError, load_torch_checkpoint, to_torch_state_dict
from vmamba_jax.models import create_model, get_entry
from vmamba_jax.models.swin import shifted_window_regions, window_and_shift

REPO = pathlib.Path(__file__).resolve().parents[1]
ARTIFACT = REPO / "benchmarks" / "results" / "timm_parity_mini.npz"
sys.path.insert(0, str(REPO / "benchmarks"))
import timm_parity  # noqa: E402


@pytest.fixture(scope="module")
def artifact():
    return timm_parity.load_artifact(str(ARTIFACT))


@pytest.mark.parametrize("case", [c[0] for c in timm_parity.MINI_CASES])
def test_timm_parity_artifact(artifact, case):
    c = artifact[case]
    ours = timm_parity.run_ours(c["model"], c["overrides"], c["state_dict"], c["x"])
    assert ours.shape == c["logits"].shape
    assert timm_parity.rel_err(ours, c["logits"]) <= timm_parity.TOLERANCE


@pytest.mark.parametrize("name", ["convnext_tiny", "convnext_small", "convnext_base", "swin_tiny_patch4_window7_224",
                                  "swin_small_patch4_window7_224", "swin_base_patch4_window7_224"])
def test_param_counts_match_timm(name):
    model = create_model(name)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
    n = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes))
    assert n == get_entry(name).params


@pytest.mark.slow  # the mismatch error path tries every registered model to suggest the right one (~1 min on CI)
def test_converter_drops_swin_buffers_and_stays_strict(artifact):
    c = artifact["swin_mini_64"]
    model = create_model(c["model"], **c["overrides"])
    sd = dict(c["state_dict"])
    sd["layers.0.blocks.1.attn.relative_position_index"] = np.zeros((49, 49), np.int64)  # older timm files
    sd["layers.0.blocks.1.attn_mask"] = np.zeros((9, 49, 49), np.float32)
    variables = load_torch_checkpoint(sd, model)
    back = to_torch_state_dict(variables)
    assert set(back) == set(c["state_dict"])
    for k, v in back.items():
        np.testing.assert_array_equal(v, c["state_dict"][k])
    sd.pop("layers.1.downsample.reduction.weight")
    with pytest.raises(CheckpointMismatchError, match="layers.1.downsample.reduction.weight"):
        load_torch_checkpoint(sd, model)


def test_swin_window_rules():
    assert window_and_shift((56, 56), 7, 3) == ((7, 7), (3, 3))
    assert window_and_shift((7, 7), 7, 3) == ((7, 7), (0, 0))      # one window: no shift
    assert window_and_shift((4, 4), 7, 3) == ((4, 4), (0, 0))      # smaller than a window: clamp
    # 4x4 map, window 2, shift 1: regions [0:2), [2:3), [3:4) per axis -> window (1,1) mixes 4 regions
    ids = shifted_window_regions(4, 4, (2, 2), (1, 1))
    assert ids.shape == (4, 4)
    np.testing.assert_array_equal(ids[0], [0, 0, 0, 0])
    np.testing.assert_array_equal(ids[3], [4, 5, 7, 8])
