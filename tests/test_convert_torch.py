"""Reading real `torch.save` files (runs where torch is installed: the GPU machine; CI has no torch and skips it).

The official checkpoints are `torch.save({'model': state_dict, 'config': <yacs CfgNode>, ...})`. We write the same
structure with a config object of a class that is importable at save time and gone at load time, as yacs is for our
users, and load it without that class.
"""

from __future__ import annotations

import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import vmamba_jax  # noqa: E402
from vmamba_jax.convert import load_torch_checkpoint, to_torch_state_dict  # noqa: E402


def test_official_style_pth_without_yacs(tmp_path, monkeypatch):
    (tmp_path / "fakeyacs").mkdir()
    (tmp_path / "fakeyacs" / "__init__.py").write_text("")
    (tmp_path / "fakeyacs" / "config.py").write_text(textwrap.dedent("""
        class CfgNode(dict):
            pass
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    from fakeyacs.config import CfgNode

    model = vmamba_jax.create_model("vmamba_tiny_s1l8", dims=16, depths=(1, 1, 1, 1), num_classes=4)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    sd = {k: torch.from_numpy(np.array(v)) for k, v in to_torch_state_dict(variables).items()}
    cfg = CfgNode(MODEL=CfgNode(NAME="vssm1_tiny_0230s"))
    path = tmp_path / "ckpt_epoch_1.pth"
    torch.save({"model": sd, "model_ema": {k: v.to(torch.bfloat16) for k, v in sd.items()}, "config": cfg,
                "epoch": 1, "max_accuracy": 0.5}, path)
    for name in [m for m in sys.modules if m.startswith("fakeyacs")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path / "nowhere"))
    (tmp_path / "fakeyacs" / "config.py").unlink()

    loaded = load_torch_checkpoint(str(path), model)
    for a, b in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(variables)):
        np.testing.assert_array_equal(a, b)
    ema = load_torch_checkpoint(str(path), model, ema=True)   # bf16 tensors come back as fp32
    leaf = ema["params"]["layers_0"]["blocks_0"]["op"]["dt_projs_bias"]
    assert leaf.dtype == jnp.float32
    np.testing.assert_allclose(leaf, variables["params"]["layers_0"]["blocks_0"]["op"]["dt_projs_bias"], rtol=1e-2)
