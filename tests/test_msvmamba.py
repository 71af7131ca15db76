"""MSVMamba pieces that need no golden file: PyTorch's nearest rule, the low-res routes, scan dispatch (one fused call
with the model's implementation), implementation agreement, FLOPs, mixed precision and training mode."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vmamba_jax
from vmamba_jax.models import msvmamba


def tiny(name="msvmamba_v3_tiny", **kw):
    """A 2-block MSVMamba small enough for CPU."""
    return vmamba_jax.create_model(name, dims=16, depths=(1, 1, 1, 1), num_classes=5, **kw)


def test_torch_nearest_rule_differs_from_jax_resize():
    # PyTorch F.interpolate(mode="nearest") source indices: floor(dst * in / out).
    np.testing.assert_array_equal(msvmamba.torch_nearest_indices(4, 7), [0, 0, 1, 1, 2, 2, 3])
    np.testing.assert_array_equal(msvmamba.torch_nearest_indices(2, 3), [0, 0, 1])
    np.testing.assert_array_equal(msvmamba.torch_nearest_indices(1, 2), [0, 0])
    np.testing.assert_array_equal(msvmamba.torch_nearest_indices(28, 56), np.arange(56) // 2)
    x = jnp.arange(4.0).reshape(1, 4, 1, 1)
    ours = msvmamba.upsample(x, (7, 1), "nearest")[0, :, 0, 0]
    np.testing.assert_array_equal(ours, [0, 0, 1, 1, 2, 2, 3])
    half_pixel = jax.image.resize(x, (1, 7, 1, 1), "nearest")[0, :, 0, 0]
    assert not np.array_equal(ours, half_pixel)   # why we do not use jax.image.resize here


def test_bilinear_upsample_is_half_pixel():
    # F.interpolate(bilinear, align_corners=False) of [0, 1] to 4 samples: [0, .25, .75, 1].
    x = jnp.array([0.0, 1.0]).reshape(1, 2, 1, 1)
    np.testing.assert_allclose(msvmamba.upsample(x, (4, 1), "bilinear")[0, :, 0, 0], [0, .25, .75, 1])


def test_low_res_routes_order_and_merge():
    h, w = 2, 3
    x = jnp.arange(h * w, dtype=jnp.float32).reshape(1, h, w, 1)
    seq = msvmamba.low_res_scan(x)[0, :, 0]
    # [reversed row-major | column-major | reversed column-major]
    np.testing.assert_array_equal(seq, [5, 4, 3, 2, 1, 0] + [0, 3, 1, 4, 2, 5] + [5, 2, 4, 1, 3, 0])
    # merging un-permutes each route: merge(scan(x)) = 3 x
    np.testing.assert_array_equal(msvmamba.low_res_merge(msvmamba.low_res_scan(x), h, w), 3 * x)


@pytest.mark.parametrize("hw", [(10, 14), (7, 5)])
def test_one_fused_scan_call_with_the_models_implementation(monkeypatch, hw):
    calls = []
    real = msvmamba.selective_scan

    def spy(*args, **kwargs):
        calls.append((args[0].shape, args[3].shape, kwargs.get("implementation")))
        return real(*args, **kwargs)

    monkeypatch.setattr(msvmamba, "selective_scan", spy)
    op = msvmamba.MS2D(8, d_state=1, ssm_ratio=2.0, forward_type="vms_noz", scan_implementation="associative")
    x = jnp.ones((2, *hw, 8))
    jax.eval_shape(op.init, jax.random.key(0), x)   # tracing is enough to see the calls
    h, w = hw
    L = max(h * w, 3 * (-(-h // 2)) * (-(-w // 2)))   # padded to the longer of full-res and concatenated low-res
    # one call: both branches as 2 groups, the whole low-res route set as ONE sequence, implementation passed through
    assert calls == [((2, 2 * 16, L), (2, 2, 1, L), "associative")]


def test_scan_implementations_agree(forward_type="multiscale_4scan_12"):
    x = jax.random.normal(jax.random.key(1), (2, 9, 12, 8))
    ops = {impl: msvmamba.MS2D(8, d_state=2, forward_type=forward_type, scan_implementation=impl)
           for impl in ("xla", "associative")}
    params = ops["xla"].init(jax.random.key(0), x)
    # shift dt up so the recurrence actually carries state across positions and route boundaries
    params = jax.tree_util.tree_map_with_path(
        lambda p, v: v + 3.0 if "dt_projs_bias" in jax.tree_util.keystr(p) else v, params)
    outs = {}
    for impl, op in ops.items():
        fn = jax.jit(jax.value_and_grad(lambda p, x: jnp.sum(jnp.sin(op.apply(p, x))), argnums=(0, 1)))
        outs[impl] = fn(params, x)
    for a, b in zip(jax.tree_util.tree_leaves(outs["xla"]), jax.tree_util.tree_leaves(outs["associative"])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(np.abs(b).max()))


@pytest.mark.parametrize("name,gflops", [("msvmamba_nano", 0.88), ("msvmamba_tiny", 4.61), ("msvmamba_v3_base", 16.3)])
def test_flops_match_the_official_counts(name, gflops):
    g = vmamba_jax.flops(vmamba_jax.create_model(name), 224) / 1e9
    assert abs(g - gflops) / gflops < 0.01, g


def test_forward_types_are_validated():
    with pytest.raises(ValueError, match="multiscale_4scan_12"):
        tiny(forward_type="v05_noz")
    with pytest.raises(ValueError, match="ConvFFN"):
        tiny(mlp_ratio=4.0)


@pytest.mark.parametrize("forward_type", ["multiscale_4scan_12", "vms"])
def test_bf16_block_is_finite_and_close_to_fp32(forward_type):
    # One MS3 block (MS2D + SE + ConvFFN) at odd sizes: odd low-res map, padded fused scan, odd upsample.
    kw = dict(forward_type=forward_type, conv_ffn_ratio=4 if forward_type == "vms" else 2, ssm_ratio=2.0,
              scan_implementation="xla")
    block32, block16 = msvmamba.MSVSSBlock(16, **kw), msvmamba.MSVSSBlock(16, dtype=jnp.bfloat16, **kw)
    x = jax.random.normal(jax.random.key(0), (2, 9, 13, 16))
    variables = jax.jit(block32.init)(jax.random.key(1), x)

    @jax.jit
    def run(variables, x):
        def loss(p):
            y = block16.apply({"params": p}, x)
            return jnp.mean(y.astype(jnp.float32) ** 2), y

        (_, y16), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
        return block32.apply(variables, x), y16, grads

    y32, y16, grads = run(variables, x)
    np.testing.assert_allclose(np.asarray(y16, np.float32), y32, atol=0.05 * float(np.abs(y32).max()))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))
    assert all(g.dtype == jnp.float32 for g in jax.tree_util.tree_leaves(grads))   # params stay fp32


def test_backbone_features_and_classifier_weights_load():
    from vmamba_jax.convert import load_torch_checkpoint, to_torch_state_dict
    kw = dict(dims=16, depths=(1, 1, 1, 1))
    backbone = vmamba_jax.create_model("msvmamba_v3_tiny", features_only=True, **kw)
    x = jnp.ones((1, 64, 96, 3))
    variables = jax.jit(backbone.init)(jax.random.key(0), x)
    feats = jax.jit(backbone.apply)(variables, x)
    assert [f.shape for f in feats] == [(1, 16, 24, 16), (1, 8, 12, 32), (1, 4, 6, 64), (1, 2, 3, 128)]
    assert "classifier" not in variables["params"] and "outnorm3" in variables["params"]
    # A classification state_dict (no outnorms, a classifier head) loads as Backbone_VSSM.load_pretrained does.
    sd = {k: v + 1 for k, v in to_torch_state_dict(variables, backbone).items() if not k.startswith("outnorm")}
    sd["classifier.head.weight"] = np.zeros((10, 128), np.float32)
    loaded = load_torch_checkpoint(sd, backbone, exclude=("outnorm",), ignore_unexpected=("classifier.",))
    np.testing.assert_array_equal(loaded["params"]["layers_2"]["blocks_0"]["op"]["Ds"], sd["layers.2.blocks.0.op.Ds"])
