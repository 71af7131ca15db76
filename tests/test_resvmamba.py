"""Res-VMamba: the stage shortcut (2x2 max-pool of each stage's input, 1x1 conv, added after the stage's downsample),
learned by default, and the official random-projection behaviour with `faithful=True`."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import vmamba_jax
from vmamba_jax.convert import expected_state_dict_shapes, load_torch_checkpoint
from vmamba_jax.models import get_entry
from vmamba_jax.models.resvmamba import max_pool_2x2
from vmamba_jax.models.vmamba import PatchEmbed

SHORTCUT_PARAMS_S = 388_416   # 96*192+192 + 192*384+384 + 384*768+768 (spec derivatives.md 1.2, quirk 3)


def tiny(**kw):
    """Res-VMamba-S's layout (v0 blocks, PatchMerging) shrunk for CPU."""
    return vmamba_jax.create_model("resvmamba_small", dims=16, depths=(1, 1, 1, 1), ssm_d_state=4, num_classes=5,
                                   drop_path_rate=0.0, scan_implementation="xla", **kw)


def n_params(model) -> int:
    return sum(math.prod(s) for s in expected_state_dict_shapes(model).values())   # abstract init


def test_param_counts(official_shapes):
    vmamba_s = official_shapes["vanilla_vmamba_small"]
    faithful = vmamba_jax.create_model("resvmamba_small", faithful=True)
    assert {k: list(v) for k, v in expected_state_dict_shapes(faithful).items()} == vmamba_s["state_dict"]
    assert n_params(faithful) == vmamba_s["n_params"] == 44_417_416          # = VMamba-S v0: no parameters added
    learned = vmamba_jax.create_model("resvmamba_small")
    assert n_params(learned) == vmamba_s["n_params"] + SHORTCUT_PARAMS_S == get_entry("resvmamba_small").params


def test_faithful_mode_loads_a_vmamba_s_v0_state_dict(official_shapes):
    shapes = official_shapes["vanilla_vmamba_small"]["state_dict"]
    state_dict = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
    variables = load_torch_checkpoint(state_dict, vmamba_jax.create_model("resvmamba_small", faithful=True))
    assert vmamba_jax.count_params(variables) == 44_417_416


def test_faithful_mode_is_a_fresh_random_projection_per_call():
    model = tiny(faithful=True)
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    variables = jax.jit(model.init)(jax.random.key(1), x)
    assert not any(k.startswith("shortcut") for k in variables["params"])   # no parameters
    apply = jax.jit(lambda v, x, k: model.apply(v, x, rngs={"shortcut": k}))   # eval mode (train=False)
    a, b, a2 = apply(variables, x, jax.random.key(2)), apply(variables, x, jax.random.key(3)), \
        apply(variables, x, jax.random.key(2))
    assert float(jnp.abs(a - b).max()) > 1e-3       # a different projection every call, even in eval
    np.testing.assert_array_equal(a, a2)            # reproducible given the key
    with pytest.raises(ValueError, match="shortcut"):
        model.apply(variables, x)                   # the stream is required, as the official output is random


def test_shortcut_is_maxpool_conv1x1_of_the_stage_input_added_after_the_downsample():
    res, plain = tiny(), vmamba_jax.create_model(
        "vanilla_vmamba_small", dims=16, depths=(1, 1, 1, 1), ssm_d_state=4, num_classes=5, drop_path_rate=0.0,
        scan_implementation="xla")
    x = jax.random.normal(jax.random.key(0), (2, 32, 64, 3))
    params = jax.jit(res.init)(jax.random.key(1), x)["params"]
    shortcut = {k: v for k, v in params.items() if k.startswith("shortcut_")}
    assert sorted(shortcut) == ["shortcut_0", "shortcut_1", "shortcut_2"]     # stages 0..2 only
    base = {k: v for k, v in params.items() if not k.startswith("shortcut_")}
    out_res = jax.jit(lambda p: res.apply({"params": p}, x, mutable=["intermediates"])[1]["intermediates"])(params)
    out_plain = jax.jit(lambda p: plain.apply({"params": p}, x, mutable=["intermediates"])[1]["intermediates"])(base)
    stage_in = PatchEmbed(16).apply({"params": params["patch_embed"]}, x)     # stage 0's input
    k, b = shortcut["shortcut_0"]["kernel"][0, 0], shortcut["shortcut_0"]["bias"]
    expected = max_pool_2x2(stage_in) @ k + b
    np.testing.assert_allclose(out_res["layers.0"][0] - out_plain["layers.0"][0], expected, atol=1e-5)
    # zero shortcuts give back plain VMamba
    zeroed = dict(base, **jax.tree_util.tree_map(jnp.zeros_like, shortcut))
    out_zeroed = jax.jit(lambda p: res.apply({"params": p}, x, mutable=["intermediates"])[1]["intermediates"])(zeroed)
    for i in range(4):
        np.testing.assert_allclose(out_zeroed[f"layers.{i}"][0], out_plain[f"layers.{i}"][0], atol=1e-6)


def test_faithful_projection_has_pytorch_default_init_bounds():
    model = tiny(faithful=True)
    variables = {}   # the faithful shortcut has no parameters

    def stage0_shortcut(m, x):   # the shortcut alone, on a stage input whose pooled value is the identity basis
        return m._shortcut(0, x, 32)

    eye = jnp.repeat(jnp.repeat(jnp.eye(16)[None, :, None, :], 2, axis=1), 2, axis=2)   # (1, 32, 2, 16)
    y = model.apply(variables, eye, rngs={"shortcut": jax.random.key(5)}, method=stage0_shortcut)[0, :, 0]
    bias = model.apply(variables, jnp.zeros_like(eye), rngs={"shortcut": jax.random.key(5)},
                       method=stage0_shortcut)[0, 0, 0]
    w = y - bias                                        # (16 in, 32 out): row j = W[j]
    bound = 1 / math.sqrt(16)
    assert float(jnp.abs(w).max()) <= bound and float(jnp.abs(bias).max()) <= bound
    assert float(jnp.abs(w).max()) > 0.8 * bound and float(jnp.std(w)) > 0.8 * bound / math.sqrt(3)   # uniform


@pytest.mark.slow
def test_learned_mode_trains():
    model = tiny()
    x = jax.random.normal(jax.random.key(0), (8, 32, 32, 3))
    y = jnp.arange(8) % 5
    params = jax.jit(model.init)(jax.random.key(1), x)["params"]  # eager flax init: ~20 s more on CI
    opt = optax.adam(3e-3)

    @jax.jit
    def step(params, opt_state, key):
        def loss_fn(p):
            logits = model.apply({"params": p}, x, train=True, rngs={"dropout": key})
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, grads

    opt_state, losses, p = opt.init(params), [], params
    for i in range(12):
        p, opt_state, loss, grads = step(p, opt_state, jax.random.key(i))
        losses.append(float(loss))
        if i == 0:
            assert float(jnp.abs(grads["shortcut_1"]["kernel"]).max()) > 0   # the shortcut is learned
    assert losses[-1] < 0.5 * losses[0], losses
    assert not np.allclose(p["shortcut_0"]["kernel"], params["shortcut_0"]["kernel"])


def test_input_size_must_fit_the_shortcut():
    model = tiny()
    with pytest.raises(ValueError, match="multiple of 32"):
        model.init(jax.random.key(0), jnp.zeros((1, 48, 64, 3)))


def test_faithful_mode_runs_through_the_train_and_eval_steps():
    """train.py's step passes a "shortcut" key per step (fresh projections), the eval step a fixed one."""
    from vmamba_jax.train.config import default_config
    from vmamba_jax.train.loop import build_model
    from vmamba_jax.train.mesh import batch_sharding, make_mesh, state_shardings
    from vmamba_jax.train.optimizer import make_optimizer
    from vmamba_jax.train.state import create_train_state
    from vmamba_jax.train.steps import make_eval_step, make_train_step

    cfg = default_config()
    cfg.model.name = "resvmamba_small"
    cfg.model.kwargs.update(dims=8, depths=(1, 1), faithful=True)
    cfg.dtype = "float32"
    model = build_model(cfg, 10)
    sample = jnp.zeros((1, 16, 16, 3))
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), sample)["params"])
    tx, sched = make_optimizer(cfg.optim, params, global_batch=4, steps_per_epoch=10, total_steps=100)
    mesh = make_mesh(1)
    init = lambda rng: create_train_state(model, tx, rng, sample)  # noqa: E731
    sh = state_shardings(jax.eval_shape(init, jax.random.PRNGKey(0)), mesh)
    step = make_train_step(model, tx, sched, cfg, num_classes=10, state_sharding=sh,
                           batch_sharding=batch_sharding(mesh), mesh=mesh)
    state = jax.jit(init, out_shardings=sh)(jax.random.PRNGKey(0))
    batch = {"image": jax.random.normal(jax.random.PRNGKey(1), (4, 16, 16, 3)),
             "label": jnp.arange(4, dtype=jnp.int32), "corrupt": jnp.zeros((4,), jnp.int32)}
    state, metrics = step(state, batch)
    assert np.isfinite(float(metrics["loss"]))
    eval_step = make_eval_step(model, params_sharding=sh.params, batch_sharding=batch_sharding(mesh), mesh=mesh)
    eval_batch = {"image": batch["image"], "label": batch["label"], "mask": jnp.ones((4,), jnp.float32)}
    a, b = eval_step(state.params, eval_batch), eval_step(state.params, eval_batch)
    assert float(a["count"]) == 4 and float(a["loss"]) == float(b["loss"])


def test_backbone_keeps_the_stage_shortcuts():
    kw = dict(dims=16, depths=(1, 1, 1, 1))
    backbone = vmamba_jax.create_model("resvmamba_small", features_only=True, **kw)
    x = jnp.ones((1, 64, 96, 3))
    variables = jax.jit(backbone.init)(jax.random.key(0), x)
    feats = jax.jit(backbone.apply)(variables, x)
    assert [f.shape for f in feats] == [(1, 16, 24, 16), (1, 8, 12, 32), (1, 4, 6, 64), (1, 2, 3, 128)]
    assert {"shortcut_0", "shortcut_1", "shortcut_2", "outnorm0"} <= set(variables["params"])
    # Stage 1 sees the shortcut: zeroing it changes the stage-1 features but not stage 0's.
    params = jax.tree_util.tree_map(lambda a: a, variables["params"])
    params["shortcut_0"] = jax.tree_util.tree_map(jnp.zeros_like, params["shortcut_0"])
    feats0 = jax.jit(backbone.apply)({"params": params}, x)
    np.testing.assert_array_equal(feats0[0], feats[0])
    assert not np.allclose(feats0[1], feats[1])
