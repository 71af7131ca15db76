"""The strict converter: file formats, legacy keys, named errors with likely causes, the CLI round trip."""

from __future__ import annotations

import pickle
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vmamba_jax
from vmamba_jax.convert import (CheckpointMismatchError, load_converted, load_torch_checkpoint, read_state_dict,
                                to_torch_state_dict)
from vmamba_jax.convert.__main__ import main as convert_cli
from vmamba_jax.convert.io import _TolerantUnpickler

KW = dict(dims=16, depths=(1, 1, 2, 1), num_classes=5)


@pytest.fixture(scope="module")
def small():
    model = vmamba_jax.create_model("vmamba_tiny_s1l8", **KW)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))  # eager init: ~40 s on CI
    return model, variables, to_torch_state_dict(variables)


def _equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_round_trip_is_exact(small):
    model, variables, sd = small
    assert _equal(load_torch_checkpoint(sd, model), variables)
    assert sd["layers.0.blocks.0.op.in_proj.weight"].shape == (16, 16)          # (out, in)
    assert sd["layers.0.blocks.0.op.conv2d.weight"].shape == (16, 1, 3, 3)      # OIHW
    assert sd["patch_embed.0.weight"].shape == (8, 3, 3, 3)


def test_reads_npz_safetensors_and_training_checkpoint_dicts(small, tmp_path):
    model, variables, sd = small
    np.savez(tmp_path / "w.npz", **sd)
    assert _equal(load_torch_checkpoint(str(tmp_path / "w.npz"), model), variables)
    from safetensors.numpy import save_file
    save_file(sd, str(tmp_path / "w.safetensors"))
    assert _equal(load_torch_checkpoint(tmp_path / "w.safetensors", model), variables)
    ema = {k: v + 1 for k, v in sd.items()}
    full = {"model": sd, "model_ema": ema, "optimizer": {}, "epoch": 3}
    assert _equal(load_torch_checkpoint(full, model), variables)
    loaded_ema = load_torch_checkpoint(full, model, ema=True)
    assert np.array_equal(to_torch_state_dict(loaded_ema)["classifier.head.bias"], ema["classifier.head.bias"])
    with pytest.raises(KeyError, match="model_ema"):
        read_state_dict({"model": sd}, ema=True)


def test_unpickles_configs_of_classes_that_are_not_installed(monkeypatch):
    # Official files pickle a yacs CfgNode; yacs need not be installed. Pickle an instance of a class that lives in a
    # module importable only while pickling, as yacs is on the machine that trained the model.
    import io
    import types

    module = types.ModuleType("yacs_like_config")
    module.CfgNode = type("CfgNode", (dict,), {"__module__": "yacs_like_config"})
    monkeypatch.setitem(sys.modules, "yacs_like_config", module)
    payload = pickle.dumps({"config": module.CfgNode(MODEL="vssm"), "epoch": 3})
    monkeypatch.delitem(sys.modules, "yacs_like_config")
    with pytest.raises(ModuleNotFoundError):
        pickle.loads(payload)
    obj = _TolerantUnpickler(io.BytesIO(payload)).load()
    assert obj["epoch"] == 3 and type(obj["config"]).__name__ == "CfgNode"


def test_legacy_v0_key_names_are_renamed():
    model = vmamba_jax.create_model("vanilla_vmamba_tiny", dims=16, depths=(1, 1, 1, 1), num_classes=3)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    sd = to_torch_state_dict(variables)
    legacy = {}
    for k, v in sd.items():
        k = k.replace("patch_embed.0.", "patch_embed.proj.").replace("patch_embed.2.", "patch_embed.norm.")
        k = k.replace(".norm.", ".ln_1.") if ".blocks." in k else k
        k = k.replace(".op.", ".self_attention.")
        k = k.replace("classifier.norm.", "norm.").replace("classifier.head.", "head.")
        legacy[k] = v
    assert "blocks.0.ln_1.weight" in " ".join(legacy) and "head.weight" in legacy
    assert _equal(load_torch_checkpoint(legacy, model), variables)


def test_ssm_ratio_mismatch_names_the_cause(small):
    _, _, sd = small
    model = vmamba_jax.create_model("vmamba_tiny_s1l8", ssm_ratio=2.0, **KW)
    with pytest.raises(CheckpointMismatchError) as e:
        load_torch_checkpoint(sd, model)
    msg = str(e.value)
    assert "layers.0.blocks.0.op.in_proj.weight: checkpoint (16, 16) vs model (32, 16)" in msg
    assert "ssm_ratio" in msg and "s2" in msg


def test_missing_unexpected_and_head_mismatches_are_all_reported(small):
    model, _, sd = small
    broken = dict(sd)
    del broken["layers.2.blocks.1.norm.weight"]
    broken["layers.2.blocks.2.norm.weight"] = np.zeros(64, np.float32)
    broken["classifier.head.weight"] = np.zeros((1000, 128), np.float32)
    broken["classifier.head.bias"] = np.zeros(1000, np.float32)
    with pytest.raises(CheckpointMismatchError) as e:
        load_torch_checkpoint(broken, model)
    msg = str(e.value)
    assert "missing keys" in msg and "layers.2.blocks.1.norm.weight" in msg
    assert "unexpected keys" in msg and "layers.2.blocks.2.norm.weight" in msg
    assert "num_classes=1000" in msg and "depths" in msg


def test_exclude_keeps_a_fresh_head_for_fine_tuning(small):
    _, variables, sd = small
    model10 = vmamba_jax.create_model("vmamba_tiny_s1l8", **{**KW, "num_classes": 10})
    sd = {k: v for k, v in sd.items() if not k.startswith("classifier.head")}
    loaded = load_torch_checkpoint(sd, model10, exclude=("classifier.head",))
    assert loaded["params"]["classifier"]["head"]["kernel"].shape == (128, 10)
    np.testing.assert_array_equal(loaded["params"]["layers_3"]["blocks_0"]["op"]["A_logs"],
                                  variables["params"]["layers_3"]["blocks_0"]["op"]["A_logs"])


def test_a_released_checkpoint_in_the_wrong_model_is_identified(official_shapes):
    sd = {k: np.zeros(s, np.float32) for k, s in official_shapes["vmamba_small_s2l15"]["state_dict"].items()}
    with pytest.raises(CheckpointMismatchError, match="matches the registered model 'vmamba_small_s2l15'"):
        load_torch_checkpoint(sd, vmamba_jax.create_model("vmamba_small_s1l20"))


def test_cli_converts_to_a_flax_checkpoint(small, tmp_path, capsys):
    model, variables, sd = small
    np.savez(tmp_path / "w.npz", **sd)
    overrides = [f"dims={KW['dims']}", f"depths={KW['depths']}", f"num_classes={KW['num_classes']}"]
    args = ["--model", "vmamba_tiny_s1l8", "--checkpoint", str(tmp_path / "w.npz"), "--out", str(tmp_path / "out")]
    assert convert_cli(args + sum((["--set", o] for o in overrides), [])) == 0
    model2, variables2 = load_converted(str(tmp_path / "out"))
    assert model2 == model and _equal(variables2, variables)
    assert convert_cli(args + ["--set", "dims=32"]) == 2
    assert "likely cause" in capsys.readouterr().err
