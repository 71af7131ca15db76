"""Model-level checks that need no golden file: registry, parameter counts, conversion of every released shape,
FLOPs, initialisation, input validation, output shapes, mixed precision and the backbone mode."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vmamba_jax
from vmamba_jax.convert import expected_state_dict_shapes, load_torch_checkpoint
from vmamba_jax.models import get_entry, model_kwargs

RELEASED = ["vmamba_tiny_s1l8", "vmamba_small_s2l15", "vmamba_base_s2l15", "vmamba_tiny_s2l5", "vmamba_small_s1l20",
            "vmamba_base_s1l20", "vanilla_vmamba_tiny", "vanilla_vmamba_small", "vanilla_vmamba_base"]


def tiny(**kw):
    """A VMamba-T-shaped model small enough to run on CPU in a second."""
    return vmamba_jax.create_model("vmamba_tiny_s1l8", dims=16, depths=(1, 1, 1, 1), num_classes=7, **kw)


@pytest.fixture(scope="module")
def tiny_variables():
    """tiny()'s variables, initialised once (jitted: an eager flax init took ~30 s on CI's CPU). The parameters do
    not depend on the input size, so every test of tiny() at any size applies these."""
    return jax.jit(tiny().init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_list_models_has_every_released_variant():
    assert vmamba_jax.list_models()[:len(RELEASED)] == RELEASED


@pytest.mark.parametrize("name", RELEASED)
def test_param_count_and_keys_equal_the_official(name, official_shapes):
    official = official_shapes[name]
    model = vmamba_jax.create_model(name)
    shapes = expected_state_dict_shapes(model)
    assert {k: list(v) for k, v in shapes.items()} == official["state_dict"]
    assert sum(math.prod(s) for s in shapes.values()) == official["n_params"] == get_entry(name).params


@pytest.mark.parametrize("name", ["vmamba_tiny_s1l8", "vanilla_vmamba_tiny"])
def test_converts_from_a_zero_state_dict_of_official_shapes(name, official_shapes):
    state_dict = {k: np.zeros(s, np.float32) for k, s in official_shapes[name]["state_dict"].items()}
    variables = load_torch_checkpoint(state_dict, vmamba_jax.create_model(name))
    assert vmamba_jax.count_params(variables) == official_shapes[name]["n_params"]
    assert all(not np.any(np.asarray(x)) for x in jax.tree_util.tree_leaves(variables))


def test_flops_of_vmamba_tiny_match_the_official_count():
    g = vmamba_jax.flops(vmamba_jax.create_model("vmamba_tiny_s1l8"), 224) / 1e9
    assert abs(g - 4.91) / 4.91 < 0.01, g   # official: 4.9056 G (fvcore, scan counted as 9BLDN + BDL)


def test_initialisation_follows_mamba_init_v0():
    model = vmamba_jax.create_model("vmamba_tiny_s1l8", dims=32, depths=(1, 1, 1, 1))
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]  # eager init: ~30 s
    op = params["layers_0"]["blocks_0"]["op"]
    assert np.all(op["A_logs"] == 0.0) and np.all(op["Ds"] == 1.0)       # d_state 1: log(1) = 0, A = -1
    dt = np.asarray(jax.nn.softplus(op["dt_projs_bias"]))
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6 and dt.min() < 0.01 < dt.max()
    R = op["dt_projs_weight"].shape[-1]
    assert np.abs(op["dt_projs_weight"]).max() <= R ** -0.5
    assert np.abs(op["x_proj_weight"]).max() <= 1 / math.sqrt(op["x_proj_weight"].shape[-1])
    kernel = np.asarray(params["layers_2"]["blocks_0"]["mlp"]["fc1"]["kernel"])   # trunc_normal(std .02)
    assert 0.015 < kernel.std() < 0.025 and np.all(params["layers_2"]["blocks_0"]["mlp"]["fc1"]["bias"] == 0)
    v0 = vmamba_jax.create_model("vanilla_vmamba_tiny", dims=32, depths=(1, 1, 1, 1))
    op0 = jax.jit(v0.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]["layers_0"]["blocks_0"]["op"]
    np.testing.assert_allclose(op0["A_logs"][0], np.log(np.arange(1, 17)), rtol=1e-6)  # S4D-real


@pytest.mark.parametrize("hw", [(64, 96), (33, 47), (7, 5), (1, 2)])
def test_output_shapes_for_any_size_the_official_model_accepts(hw, tiny_variables):
    x = jnp.ones((2, *hw, 3))
    logits, state = jax.jit(lambda v, x: tiny().apply(v, x, mutable=["intermediates"]))(tiny_variables, x)
    assert logits.shape == (2, 7) and logits.dtype == jnp.float32
    h, w = hw
    for i in range(4):   # v2 stem: two stride-2 convs (ceil), v3 downsample: ceil(H/2) per stage
        h, w = (math.ceil(math.ceil(h / 2) / 2), math.ceil(math.ceil(w / 2) / 2)) if i == 0 else (h, w)
        h, w = (math.ceil(h / 2), math.ceil(w / 2)) if i < 3 else (h, w)
        assert state["intermediates"][f"layers.{i}"][0].shape[1:3] == (h, w), i


def test_bad_inputs_get_errors_that_name_the_fix(tiny_variables):
    model, variables = tiny(), tiny_variables
    with pytest.raises(ValueError, match=r"x\[None\]"):
        model.apply(variables, jnp.zeros((32, 32, 3)))
    with pytest.raises(ValueError, match="channel-first"):
        model.apply(variables, jnp.zeros((1, 3, 32, 32)))
    with pytest.raises(ValueError, match="float images"):
        model.apply(variables, jnp.zeros((1, 32, 32, 3), jnp.uint8))
    v1 = vmamba_jax.create_model("vanilla_vmamba_tiny", dims=16, depths=(1, 1, 1, 1))
    v1_vars = jax.jit(v1.init)(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    with pytest.raises(ValueError, match="smaller than the minimum 4x4"):
        v1.apply(v1_vars, jnp.zeros((1, 3, 8, 3)))
    with pytest.raises(TypeError, match="did you mean 'ssm_ratio'"):
        vmamba_jax.create_model("vmamba_tiny_s1l8", ssm_ration=2.0)
    with pytest.raises(ValueError, match="Did you mean"):
        vmamba_jax.create_model("vmamba_tiny_s1l9")
    with pytest.raises(ValueError, match="v05_noz"):
        tiny(forward_type="v9").init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_bf16_compute_stays_close_to_fp32():
    x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
    model32 = vmamba_jax.create_model("vmamba_tiny_s1l8", dims=32, depths=(1, 1, 2, 1), num_classes=10)
    variables = jax.jit(model32.init)(jax.random.key(0), x)
    # Random weights give near-zero logits; spread the head so the relative error is measured on real signal.
    variables = jax.tree_util.tree_map_with_path(
        lambda p, v: v * 50 if "head" in jax.tree_util.keystr(p) else v, variables)
    y32 = jax.jit(model32.apply)(variables, x)
    y16 = jax.jit(model32.clone(dtype=jnp.bfloat16).apply)(variables, x)
    assert y16.dtype == jnp.float32
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda v: v.dtype == jnp.float32, variables))
    rel = float(jnp.abs(y16 - y32).max() / jnp.abs(y32).max())
    assert rel < 2e-2, rel


def test_drop_path_is_active_only_in_training(tiny_variables):
    model, variables = tiny(drop_path_rate=0.5), tiny_variables  # drop path adds no parameters
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    evaluate = jax.jit(model.apply)
    train = jax.jit(lambda v, x, key: model.apply(v, x, train=True, rngs={"dropout": key}))
    eval_out = evaluate(variables, x)
    np.testing.assert_array_equal(eval_out, evaluate(variables, x))
    a, b = train(variables, x, jax.random.key(1)), train(variables, x, jax.random.key(2))
    assert not np.allclose(a, b) and not np.allclose(a, eval_out)
    assert model_kwargs("vmamba_tiny_s1l8")["drop_path_rate"] == 0.2


def test_remat_gives_the_same_gradients(tiny_variables):
    """Jitted (eagerly, this was CI's slowest test at 110 s): XLA then fuses the rematerialised and the plain
    backward differently, so they agree to float rounding, measured per tensor against its own max (2.6e-6 seen)."""
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    model, variables = tiny(), tiny_variables
    grad = lambda m: jax.jit(jax.grad(lambda p: m.apply({"params": p}, x).sum()))(variables["params"])  # noqa: E731
    g1, g2 = grad(model), grad(model.clone(use_checkpoint=True))
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
        a, b = np.asarray(a), np.asarray(b)
        assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max(), np.abs(a - b).max() / np.abs(b).max()


def test_scanned_blocks_compute_the_same_function():
    """scan_blocks=True (one nn.scan per stage over stacked block parameters): the same logits and, unstacked, the
    same gradients as the per-block model from the same weights; its own init has stack_blocks' layout; drop path and
    remat still work inside the scan."""
    from vmamba_jax.models.vmamba import stack_blocks, unstack_blocks

    kw = dict(dims=(16, 32), depths=(2, 3), num_classes=7, drop_path_rate=0.3)
    plain = vmamba_jax.create_model("vmamba_tiny_s1l8", **kw)
    scanned = vmamba_jax.create_model("vmamba_tiny_s1l8", scan_blocks=True, **kw)
    x = jax.random.normal(jax.random.key(1), (2, 24, 20, 3))
    params = jax.jit(plain.init)(jax.random.key(0), x)["params"]
    stacked = stack_blocks(params)
    assert "blocks_1" in params["layers_1"] and stacked["layers_1"]["blocks"]["block"]["norm"]["scale"].shape == (3, 32)
    own = jax.eval_shape(scanned.init, jax.random.key(0), x)["params"]
    assert jax.tree.map(lambda a: a.shape, own) == jax.tree.map(lambda a: a.shape, stacked)
    jax.tree.map(np.testing.assert_array_equal, unstack_blocks(stacked), params)
    # official checkpoints: the per-block keys convert into the stacked layout and back
    from vmamba_jax.convert import to_torch_state_dict

    official = to_torch_state_dict({"params": params})
    assert "layers.1.blocks.2.op.in_proj.weight" in official
    jax.tree.map(np.testing.assert_array_equal, to_torch_state_dict({"params": stacked}), official)
    jax.tree.map(np.testing.assert_array_equal, load_torch_checkpoint(official, scanned)["params"], stacked)

    logits = lambda m, p: jax.jit(m.apply)({"params": p}, x)  # noqa: E731
    ref = logits(plain, params)
    np.testing.assert_allclose(logits(scanned, stacked), ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()))
    grad = lambda m, p: jax.jit(jax.grad(lambda p: m.apply({"params": p}, x).sum()))(p)  # noqa: E731
    for a, b in zip(jax.tree.leaves(unstack_blocks(grad(scanned, stacked))), jax.tree.leaves(grad(plain, params))):
        assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max(), np.abs(a - b).max() / np.abs(b).max()

    train = jax.jit(lambda p, key: scanned.clone(use_checkpoint=True).apply(
        {"params": p}, x, train=True, rngs={"dropout": key}))
    a, b = train(stacked, jax.random.key(1)), train(stacked, jax.random.key(2))
    assert np.isfinite(a).all() and not np.allclose(a, b)


def test_scan_implementation_per_stage(monkeypatch):
    """scan_implementation as one name per stage (a comma list, as a config override gives it): each stage's SS2D
    gets its own, the function is the same, and a list of the wrong length names the fix."""
    import vmamba_jax.models.ss2d as ss2d_module

    seen = []
    real = ss2d_module.ss2d_core

    def spy(x, *args, implementation=None, **kw):
        seen.append((x.shape[1], implementation))
        return real(x, *args, implementation=implementation, **kw)

    monkeypatch.setattr(ss2d_module, "ss2d_core", spy)
    kw = dict(dims=(8, 16, 32), depths=(1, 2, 1), num_classes=5)
    x = jax.random.normal(jax.random.key(1), (1, 32, 32, 3))
    one = vmamba_jax.create_model("vmamba_tiny_s1l8", scan_implementation="xla", **kw)
    per_stage = vmamba_jax.create_model("vmamba_tiny_s1l8", scan_implementation="xla,associative,", **kw)
    params = one.init(jax.random.key(0), x)
    seen.clear()
    y = per_stage.apply(params, x)
    assert seen == [(8, "xla"), (4, "associative"), (4, "associative"), (2, None)]  # "" -> auto
    np.testing.assert_allclose(y, one.apply(params, x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="exactly 3, comma-separated"):
        vmamba_jax.create_model("vmamba_tiny_s1l8", scan_implementation="xla,associative", **kw).init(
            jax.random.key(0), x)


def test_backbone_returns_normalised_pre_downsample_features():
    kw = dict(dims=16, depths=(1, 1, 1, 1))
    backbone = vmamba_jax.create_model("vmamba_tiny_s1l8", features_only=True, out_indices=(0, 2, 3), **kw)
    x = jnp.ones((1, 64, 96, 3))
    variables = jax.jit(backbone.init)(jax.random.key(0), x)
    feats = jax.jit(backbone.apply)(variables, x)
    assert [f.shape for f in feats] == [(1, 16, 24, 16), (1, 4, 6, 64), (1, 2, 3, 128)]
    assert set(variables["params"]) >= {"outnorm0", "outnorm2", "outnorm3"} and "classifier" not in variables["params"]
    # A classification checkpoint loads into the backbone as the official Backbone_VSSM.load_pretrained does.
    classifier = vmamba_jax.create_model("vmamba_tiny_s1l8", **kw)  # its state dict: random values, official keys
    rng = np.random.default_rng(3)
    sd = {k: rng.standard_normal(shape).astype(np.float32)
          for k, shape in expected_state_dict_shapes(classifier).items()}
    loaded = load_torch_checkpoint(sd, backbone, exclude=("outnorm",), ignore_unexpected=("classifier.",))
    np.testing.assert_array_equal(loaded["params"]["layers_1"]["blocks_0"]["op"]["Ds"],
                                  sd["layers.1.blocks.0.op.Ds"])


@pytest.mark.parametrize("kernel,stride,padding,dtype", [(3, 1, 1, jnp.float32), (7, 2, 3, jnp.float32),
                                                         (5, 2, 1, jnp.float32), (3, 1, 1, jnp.bfloat16)])
def test_depthwise_conv_equals_flax_grouped_conv_in_value_and_gradient(kernel, stride, padding, dtype):
    """DepthwiseConv (every SS2D/MS2D/ConvFFN depthwise conv) replaces nn.Conv(feature_group_count=C) only for its
    kernel gradient: same init, same outputs, gradients equal to autodiff's within fp32 summation-order error."""
    import flax.linen as nn

    from vmamba_jax.models.layers import Conv, DepthwiseConv, matmul_precision, torch_default_bias_init
    from vmamba_jax.models.layers import torch_default_kernel_init

    c = 24
    ref = nn.Conv(c, (kernel, kernel), strides=(stride, stride), padding=((padding, padding),) * 2,
                  feature_group_count=c, dtype=dtype, precision=matmul_precision(dtype),
                  kernel_init=torch_default_kernel_init, bias_init=torch_default_bias_init(kernel * kernel))
    new = Conv(c, kernel, stride=stride, padding=padding, groups=c, in_features=c, dtype=dtype)
    assert isinstance(new, DepthwiseConv)
    x = jax.random.normal(jax.random.key(0), (2, 13, 11, c))
    v_ref, v_new = ref.init(jax.random.key(1), x), new.init(jax.random.key(1), x)
    jax.tree.map(np.testing.assert_array_equal, v_ref, v_new)
    np.testing.assert_array_equal(ref.apply(v_ref, x), new.apply(v_new, x))
    loss = lambda m: lambda v, x: jnp.sum(jnp.sin(m.apply(v, x).astype(jnp.float32)))  # noqa: E731
    g_ref = jax.grad(loss(ref), argnums=(0, 1))(v_ref, x)
    g_new = jax.grad(loss(new), argnums=(0, 1))(v_new, x)
    for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g_new)):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6 * float(jnp.abs(a).max()))
