"""ConvNeXt (Liu et al., CVPR 2022) in flax.linen, channel-last, as timm's `convnext.py` builds it.

The Flax tree keeps timm's state_dict names, so a timm checkpoint loads through the same mechanical converter as
VMamba (`vmamba_jax.convert.load_torch_checkpoint`): `stages_1/downsample_1` is `stages.1.downsample.1`,
`stages_2/blocks_4/conv_dw` is `stages.2.blocks.4.conv_dw`, the layer scale `gamma` keeps its name.

Shapes for ConvNeXt-T at 224 (x: (N, 224, 224, 3)):
    stem_0 (Conv 4x4 s4), stem_1 (LN)   -> (N, 56, 56, 96)
    stages_0                             -> blocks at 56x56x96 (no downsample)
    stages_1 .. stages_3                 -> downsample (LN, Conv 2x2 s2) then blocks: 28x28x192, 14x14x384, 7x7x768
    head                                 -> global average pool, LN, fc -> (N, num_classes)
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vmamba_jax.models.layers import Dense, DropPath, Mlp, linear_init
from vmamba_jax.models.registry import register_model

Dtype = Any


def LayerNorm(name: str) -> nn.LayerNorm:
    """timm ConvNeXt's LayerNorm / LayerNorm2d: eps 1e-6 (not the 1e-5 of layers.LayerNorm), fp32 math and output."""
    return nn.LayerNorm(epsilon=1e-6, dtype=jnp.float32, name=name)


def Conv(features: int, kernel: int, stride: int = 1, padding: int = 0, groups: int = 1,
         dtype: Dtype = jnp.float32, name: str | None = None) -> nn.Conv:
    """Conv2d as timm ConvNeXt initialises it (`_init_weights`: trunc_normal(.02) weight, zero bias)."""
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((padding, padding),) * 2,
                   feature_group_count=groups, dtype=dtype, kernel_init=linear_init,
                   bias_init=nn.initializers.zeros, name=name)


class ConvNeXtBlock(nn.Module):
    """x + DropPath(gamma * Mlp(LN(dwconv7x7(x)))). (N, H, W, C) -> (N, H, W, C)."""

    dim: int
    drop_path: float = 0.0
    ls_init_value: float | None = 1e-6
    mlp_ratio: float = 4.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        shortcut = x
        x = Conv(self.dim, 7, padding=3, groups=self.dim, dtype=self.dtype, name="conv_dw")(x)
        x = LayerNorm("norm")(x)
        x = Mlp(int(self.mlp_ratio * self.dim), self.dim, act_layer="gelu", dtype=self.dtype, name="mlp")(x)
        if self.ls_init_value is not None:
            gamma = self.param("gamma", nn.initializers.constant(self.ls_init_value), (self.dim,), jnp.float32)
            x = x * gamma
        return shortcut + DropPath(self.drop_path)(x, deterministic=not train)


class ConvNeXtStage(nn.Module):
    """timm `ConvNeXtStage`: optional downsample (LN2d, Conv 2x2 s2; Sequential indices 0 and 1), then blocks."""

    out_chs: int
    drop_paths: Sequence[float]
    downsample: bool = True
    ls_init_value: float | None = 1e-6
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.downsample:
            x = LayerNorm("downsample_0")(x)
            x = Conv(self.out_chs, 2, stride=2, dtype=self.dtype, name="downsample_1")(x)
        for j, dp in enumerate(self.drop_paths):
            x = ConvNeXtBlock(self.out_chs, dp, self.ls_init_value, dtype=self.dtype, name=f"blocks_{j}")(x, train)
        return x


class NormMlpClassifierHead(nn.Module):
    """timm `NormMlpClassifierHead` without the hidden layer: global average pool -> LN -> fc."""

    num_classes: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = LayerNorm("norm")(jnp.mean(x, axis=(1, 2)))
        if self.num_classes <= 0:
            return x
        return Dense(self.num_classes, dtype=self.dtype, name="fc")(x).astype(jnp.float32)

    def extra_flops(self, x: jax.Array) -> int:
        return int(np.prod(x.shape))  # fvcore counts adaptive_avg_pool2d as one flop per input element


class ConvNeXt(nn.Module):
    """timm `ConvNeXt` (defaults: ConvNeXt-T). __call__(x (N, H, W, in_chans) float, train=False) -> (N, classes).

    `dtype` is the compute dtype of convs and matmuls (params and LayerNorms stay fp32). H and W must be multiples
    of 32 for the stage strides to divide evenly (as in timm).
    """

    in_chans: int = 3
    num_classes: int = 1000
    depths: Sequence[int] = (3, 3, 9, 3)
    dims: Sequence[int] = (96, 192, 384, 768)
    ls_init_value: float | None = 1e-6
    drop_path_rate: float = 0.0
    dtype: Dtype = jnp.float32

    torch_legacy_renames = ()  # VMamba's legacy key renames (norm, head) must not touch timm keys

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] != self.in_chans:
            raise ValueError(f"ConvNeXt expects channel-last images (N, H, W, {self.in_chans}); got {x.shape}")
        x = Conv(self.dims[0], 4, stride=4, dtype=self.dtype, name="stem_0")(x.astype(jnp.float32))
        x = LayerNorm("stem_1")(x)
        dpr = np.linspace(0.0, self.drop_path_rate, sum(self.depths)).tolist()  # timm's linspace schedule
        start = 0
        for i, depth in enumerate(self.depths):
            x = ConvNeXtStage(self.dims[i], tuple(dpr[start:start + depth]), downsample=i > 0,
                              ls_init_value=self.ls_init_value, dtype=self.dtype, name=f"stages_{i}")(x, train)
            start += depth
            self.sow("intermediates", f"stages.{i}", x)
        return NormMlpClassifierHead(self.num_classes, dtype=self.dtype, name="head")(x)


# Released variants (timm names; params with the 1000-way head; top-1 of the ImageNet-1k-only weights).
@register_model("convnext_tiny", ConvNeXt, params=28_589_128, top1=82.1)
def convnext_tiny():
    """ConvNeXt-T (timm `convnext_tiny`)."""
    return dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), drop_path_rate=0.1)


@register_model("convnext_small", ConvNeXt, params=50_223_688, top1=83.1)
def convnext_small():
    """ConvNeXt-S (timm `convnext_small`)."""
    return dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768), drop_path_rate=0.4)


@register_model("convnext_base", ConvNeXt, params=88_591_464, top1=83.8)
def convnext_base():
    """ConvNeXt-B (timm `convnext_base`)."""
    return dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024), drop_path_rate=0.5)
