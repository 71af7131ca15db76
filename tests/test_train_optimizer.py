"""Optimizer: the official weight-decay mask on a real (tiny) VMamba, the SSM exemption, the schedule, AdamW."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from vmamba_jax.models import create_model
from vmamba_jax.train.config import default_config
from vmamba_jax.train.optimizer import SSM_PARAM_NAMES, make_optimizer, warmup_cosine, weight_decay_mask


@pytest.fixture(scope="module")
def params():
    model = create_model("vmamba_tiny_s1l8", dims=(8, 16), depths=(1, 1), num_classes=10)
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"])


def _by_name(tree):
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(getattr(k, "key", k)) for k in path): v for path, v in flat}


def test_official_mask(params):
    mask = _by_name(weight_decay_mask(params))
    shapes = {k: v.shape for k, v in _by_name(params).items()}
    # the official rule: no decay for ndim == 1 or names ending in ".bias"; everything else decays
    for name, decayed in mask.items():
        leaf = name.split("/")[-1]
        official = not (len(shapes[name]) == 1 or leaf == "bias")
        assert decayed == official, name
    blk = "layers_0/blocks_0/op/"
    assert mask[blk + "A_logs"] and mask[blk + "dt_projs_bias"]        # 2-D: decayed officially (spec §5.1)
    assert mask[blk + "x_proj_weight"] and mask[blk + "dt_projs_weight"]
    assert not mask[blk + "Ds"]                                        # 1-D
    assert not mask["layers_0/blocks_0/norm/scale"] and not mask["layers_0/blocks_0/norm/bias"]
    assert not mask["classifier/head/bias"] and mask["classifier/head/kernel"]
    assert mask["patch_embed/0/kernel"] and not mask["patch_embed/0/bias"]


def test_exempt_ssm(params):
    mask = _by_name(weight_decay_mask(params, exempt_ssm=True))
    for name, decayed in mask.items():
        if name.split("/")[-1] in SSM_PARAM_NAMES:
            assert not decayed, name
    assert mask["layers_0/blocks_0/op/in_proj/kernel"]
    assert sum(name.split("/")[-1] in SSM_PARAM_NAMES for name in mask) == 2 * 5


def test_schedule_warmup_then_cosine():
    s = warmup_cosine(1e-3, 1e-6, 1e-5, warmup_steps=10, total_steps=110)
    assert float(s(0)) == pytest.approx(1e-6)
    assert float(s(5)) == pytest.approx(1e-6 + 5 * (1e-3 - 1e-6) / 10)
    assert float(s(10)) == pytest.approx(1e-3)
    assert float(s(60)) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))
    assert float(s(110)) == pytest.approx(1e-5)
    assert np.all(np.diff([float(s(i)) for i in range(10, 111)]) <= 0)


def test_adamw_decays_only_masked_leaves_and_scales_lr():
    cfg = default_config().optim
    cfg.warmup_epochs = 0.0
    params = {"w": jnp.ones((3, 3)), "Ds": jnp.ones((3,)), "A_logs": jnp.ones((6, 1))}
    tx, schedule = make_optimizer(cfg, params, global_batch=1024, steps_per_epoch=10, total_steps=100)
    assert float(schedule(0)) == pytest.approx(5e-4 * 1024 / 512)  # linear scaling rule
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    assert float(new["Ds"][0]) == 1.0                                   # zero grad, no decay: unchanged
    assert float(new["w"][0, 0]) == pytest.approx(1 - 1e-3 * 0.05)    # decoupled decay lr * wd
    assert float(new["A_logs"][0, 0]) == pytest.approx(1 - 1e-3 * 0.05)


def test_clipping_at_global_norm():
    cfg = default_config().optim
    cfg.weight_decay, cfg.warmup_epochs, cfg.clip_grad = 0.0, 0.0, 1.0
    params = {"w": jnp.zeros((4,))}
    tx, _ = make_optimizer(cfg, params, global_batch=512, steps_per_epoch=1, total_steps=10)
    big = {"w": jnp.full((4,), 100.0)}
    clipped = optax.clip_by_global_norm(1.0).update(big, optax.EmptyState())[0]
    assert float(jnp.linalg.norm(clipped["w"])) == pytest.approx(1.0)
    assert isinstance(cfg, ml_collections.ConfigDict)
    tx.update(big, tx.init(params), params)  # runs with the chain
