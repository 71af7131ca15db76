"""Small building blocks shared by the VMamba-family models: PyTorch-equivalent inits, LayerNorm, DropPath, Mlp.

Everything is channel-last (N, H, W, C). Parameters are fp32; `dtype` is the compute dtype of matmuls and convs.
LayerNorms compute and return fp32 (like torch autocast, which runs layer_norm in fp32), so the residual stream stays
fp32 and the next projection casts its input to the compute dtype.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# timm trunc_normal_(std=.02) truncates at +-2 *absolute*, i.e. +-100 sigma: effectively an untruncated normal.
linear_init = nn.initializers.normal(stddev=0.02)
# PyTorch's default Conv2d/Linear init: kaiming_uniform(a=sqrt(5)) == U(+-1/sqrt(fan_in)).
torch_default_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias_init(fan_in: int) -> Callable:
    """U(+-1/sqrt(fan_in)): PyTorch's default bias init for Conv2d/Linear."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def matmul_precision(dtype: Dtype):
    """fp32 compute means true fp32: without HIGHEST, GPUs run fp32 matmuls/convs in TF32 (~1e-3 relative error,
    measured 8.7e-4 on VMamba logits on an H100), breaking parity with PyTorch. bf16/fp16 use the default."""
    return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


def LayerNorm(name: str | None = None) -> nn.LayerNorm:
    """nn.LayerNorm / LayerNorm2d of the official code: eps 1e-5 (Flax's default is 1e-6), fp32 math and output."""
    return nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, name=name)


def Conv(features: int, kernel: int, stride: int = 1, padding: int = 0, groups: int = 1, use_bias: bool = True,
         in_features: int | None = None, dtype: Dtype = jnp.float32, name: str | None = None) -> nn.Module:
    """nn.Conv2d with PyTorch's default init and explicit symmetric padding.

    Explicit padding matters: "SAME" pads asymmetrically at stride 2 and gives different numbers than PyTorch.
    `in_features` is needed only for the bias init's fan-in. A depthwise conv (groups == in == out channels) is a
    `DepthwiseConv`: the same parameters, a faster gradient.
    """
    fan_in = (in_features or features) // groups * kernel * kernel
    if groups > 1 and groups == features == (in_features or features):
        return DepthwiseConv(features, kernel, stride, padding, use_bias, dtype, name=name)
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((padding, padding),) * 2,
                   feature_group_count=groups, use_bias=use_bias, dtype=dtype, precision=matmul_precision(dtype),
                   kernel_init=torch_default_kernel_init, bias_init=torch_default_bias_init(fan_in), name=name)


def _depthwise(x, w, stride, padding, precision):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), ((padding, padding),) * 2,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1],
                                        precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def depthwise_conv2d(x: jax.Array, w: jax.Array, stride: int, padding: int, precision=None) -> jax.Array:
    """Depthwise 2D conv: x (B, H, W, C), w (k, k, 1, C) -> (B, Ho, Wo, C), symmetric zero padding.

    The forward and the input gradient are XLA's grouped convolutions. The kernel gradient is not: JAX transposes a
    grouped conv's kernel into a `batch_group_count` convolution, and with that VMamba-T's value_and_grad did not
    finish compiling and running once in 155 s on an H200, against 96 s with this one and a 1608 img/s train step
    (benchmarks/results/train_step_breakdown_h200.md). Here it is k*k reductions of the shifted input times the output
    gradient, in fp32 (memory-bound, fused by XLA): dw[i, j, c] = sum_{b, h, w} xpad[b, s*h+i, s*w+j, c] dy[b, h, w, c].
    """
    return _depthwise(x, w, stride, padding, precision)


def _depthwise_fwd(x, w, stride, padding, precision):
    return _depthwise(x, w, stride, padding, precision), (x, w)


def _depthwise_bwd(stride, padding, precision, res, dy):
    x, w = res
    (dx,) = jax.vjp(lambda x_: _depthwise(x_, w, stride, padding, precision), x)[1](dy)
    k, (ho, wo) = w.shape[0], dy.shape[1:3]
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0))).astype(jnp.float32)
    g = dy.astype(jnp.float32)
    taps = [jnp.sum(xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride] * g, axis=(0, 1, 2))
            for i in range(k) for j in range(k)]
    return dx, jnp.stack(taps).reshape(w.shape).astype(w.dtype)


depthwise_conv2d.defvjp(_depthwise_fwd, _depthwise_bwd)


class DepthwiseConv(nn.Module):
    """nn.Conv(features, (k, k), feature_group_count=features) with `depthwise_conv2d`'s gradient: the same
    parameters ("kernel" (k, k, 1, C) with PyTorch's default init, "bias" (C,)), so checkpoints do not change."""

    features: int
    kernel: int
    stride: int = 1
    padding: int = 0
    use_bias: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.param("kernel", torch_default_kernel_init, (self.kernel, self.kernel, 1, self.features))
        y = depthwise_conv2d(x.astype(self.dtype), k.astype(self.dtype), self.stride, self.padding,
                             matmul_precision(self.dtype))
        if self.use_bias:
            y = y + self.param("bias", torch_default_bias_init(self.kernel * self.kernel),
                               (self.features,)).astype(self.dtype)
        return y

    def extra_flops(self, x) -> int:  # fvcore: one per multiply-accumulate
        ho = (x.shape[1] + 2 * self.padding - self.kernel) // self.stride + 1
        wo = (x.shape[2] + 2 * self.padding - self.kernel) // self.stride + 1
        return x.shape[0] * ho * wo * self.features * self.kernel * self.kernel


def Dense(features: int, use_bias: bool = True, dtype: Dtype = jnp.float32, name: str | None = None) -> nn.Dense:
    """nn.Linear / Linear2d re-initialised by VSSM._init_weights: trunc_normal(.02) weight, zero bias."""
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, precision=matmul_precision(dtype),
                    kernel_init=linear_init, bias_init=nn.initializers.zeros, name=name)


ACTIVATIONS: dict[str, Callable] = {
    "silu": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # torch nn.GELU is the exact erf form
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
}


def activation(name: str) -> Callable:
    try:
        return ACTIVATIONS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}") from None


class DropPath(nn.Module):
    """Stochastic depth (timm 0.4.12 `drop_path`): per-sample Bernoulli keep mask, kept samples scaled by 1/keep.

    Uses the "dropout" RNG stream; each call draws an independent mask. `rate` may be a traced scalar (the blocks
    of a scanned stage, `VSSLayer.scan_blocks`, each get their own): then a zero rate still draws a (full) mask.
    """

    rate: Any

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or (isinstance(self.rate, (int, float)) and self.rate == 0.0):
            return x
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
        return jnp.where(mask, x / keep, jnp.zeros_like(x))


class Mlp(nn.Module):
    """fc1 (C -> hidden) -> act -> fc2 (hidden -> C); `gated` is the official gmlp option: fc2(x * act(z))."""

    hidden_features: int
    out_features: int
    act_layer: str = "gelu"
    gated: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = activation(self.act_layer)
        h = Dense(self.hidden_features * (2 if self.gated else 1), dtype=self.dtype, name="fc1")(x)
        if self.gated:
            h, z = jnp.split(h, 2, axis=-1)
            h = h * act(z)
        else:
            h = act(h)
        return Dense(self.out_features, dtype=self.dtype, name="fc2")(h)
