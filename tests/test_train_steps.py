"""The jitted train step: gradient accumulation over micro-batches equals one full-batch step; EMA follows its rule;
the step is deterministic for a given state (the per-step key is fold_in(rng, step))."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vmamba_jax.train.config import default_config
from vmamba_jax.train.loop import build_model
from vmamba_jax.train.mesh import batch_sharding, make_mesh, state_shardings
from vmamba_jax.train.optimizer import make_optimizer
from vmamba_jax.train.state import create_train_state
from vmamba_jax.train.steps import make_train_step


def _setup(accum):
    cfg = default_config()
    cfg.model.kwargs.dims, cfg.model.kwargs.depths, cfg.dtype = (8,), (1,), "float32"
    cfg.model.kwargs.drop_path_rate = 0.0            # micro-batches draw their own drop-path masks
    cfg.aug.mixup = cfg.aug.cutmix = 0.0             # mixup pairs image i with B-1-i across the whole batch
    cfg.optim.grad_accum_steps, cfg.optim.warmup_epochs, cfg.ema_decay = accum, 0.0, 0.5
    model = build_model(cfg, 10)
    sample = jnp.zeros((1, 16, 16, 3))
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), sample)["params"])
    tx, sched = make_optimizer(cfg.optim, params, global_batch=8, steps_per_epoch=10, total_steps=100)
    mesh = make_mesh(1)
    init = lambda rng: create_train_state(model, tx, rng, sample)
    sh = state_shardings(jax.eval_shape(init, jax.random.PRNGKey(0)), mesh)
    step = make_train_step(model, tx, sched, cfg, num_classes=10, state_sharding=sh,
                           batch_sharding=batch_sharding(mesh), mesh=mesh)
    return jax.jit(init, out_shardings=sh), step


@pytest.mark.slow
def test_grad_accumulation_matches_full_batch_and_ema():
    rng = np.random.default_rng(0)
    batch = {"image": rng.standard_normal((8, 16, 16, 3), dtype=np.float32),
             "label": rng.integers(0, 10, 8).astype(np.int32), "corrupt": np.zeros(8, np.int32)}
    out = {}
    for accum in (1, 2):
        init, step = _setup(accum)
        state = init(jax.random.PRNGKey(0))
        p0 = jax.device_get(state.params)
        new, m = step(state, batch)
        out[accum] = (float(m["loss"]), float(m["grad_norm"]), jax.device_get(new.params), jax.device_get(new.ema_params))
        if accum == 1:
            again, m2 = step(init(jax.random.PRNGKey(0)), batch)
            assert float(m2["loss"]) == out[1][0]       # deterministic
            for e, p, q in zip(jax.tree.leaves(out[1][3]), jax.tree.leaves(out[1][2]), jax.tree.leaves(p0)):
                np.testing.assert_allclose(e, 0.5 * q + 0.5 * p, rtol=1e-6, atol=1e-7)  # EMA decay 0.5
    np.testing.assert_allclose(out[2][0], out[1][0], rtol=1e-5)
    np.testing.assert_allclose(out[2][1], out[1][1], rtol=1e-4)
    for a, b in zip(jax.tree.leaves(out[2][2]), jax.tree.leaves(out[1][2])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_scan_blocks_knob_reaches_the_model():
    """config.scan_blocks builds the VSSM with scanned stages (VSSLayer.scan_blocks); off by default."""
    cfg = default_config()
    assert not build_model(cfg, 10).scan_blocks
    cfg.scan_blocks = True
    assert build_model(cfg, 10).scan_blocks
