"""Small building blocks shared by the VMamba-family models: PyTorch-equivalent inits, LayerNorm, DropPath, Mlp.

Everything is channel-last (N, H, W, C). Parameters are fp32; `dtype` is the compute dtype of matmuls and convs.
LayerNorms compute and return fp32 (like torch autocast, which runs layer_norm in fp32), so the residual stream stays
fp32 and the next projection casts its input to the compute dtype.
"""

from __future__ import annotations

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
         in_features: int | None = None, dtype: Dtype = jnp.float32, name: str | None = None) -> nn.Conv:
    """nn.Conv2d with PyTorch's default init and explicit symmetric padding.

    Explicit padding matters: "SAME" pads asymmetrically at stride 2 and gives different numbers than PyTorch.
    `in_features` is needed only for the bias init's fan-in.
    """
    fan_in = (in_features or features) // groups * kernel * kernel
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((padding, padding),) * 2,
                   feature_group_count=groups, use_bias=use_bias, dtype=dtype, precision=matmul_precision(dtype),
                   kernel_init=torch_default_kernel_init, bias_init=torch_default_bias_init(fan_in), name=name)


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

    Uses the "dropout" RNG stream; each call draws an independent mask.
    """

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0.0:
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
