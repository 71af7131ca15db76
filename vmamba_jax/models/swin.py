"""Swin Transformer (Liu et al., ICCV 2021) in flax.linen, channel-last, as timm (>= 0.9) `swin_transformer.py`
builds it.

The Flax tree keeps timm's state_dict names, so a timm checkpoint loads through the same mechanical converter as
VMamba: `layers_2/blocks_3/attn/qkv` is `layers.2.blocks.3.attn.qkv`, and `relative_position_bias_table` keeps its
name. timm's buffers (`relative_position_index`, `attn_mask`) are recomputed here from the configuration; when a
checkpoint carries them (older timm files) the converter drops them (`SwinTransformer.torch_buffers`).

Layout (timm >= 0.9): stage i > 0 *starts* with its PatchMerging downsample (`layers.{i}.downsample`); the head is
`norm` (LN) -> global average pool -> `head.fc`.

Shapes for Swin-T at 224 (x: (N, 224, 224, 3)):
    patch_embed (Conv 4x4 s4 + LN) -> (N, 56, 56, 96)
    layers_0 -> blocks at 56x56x96, window 7; layers_1 -> merge to 28x28x192, blocks; layers_2 -> 14x14x384;
    layers_3 -> 7x7x768 (window = resolution: no shift), norm, pool, head/fc -> (N, num_classes)

Windows follow timm's rule, computed from the *configured* `img_size` (so parameter shapes depend only on the
configuration): a stage whose resolution r is <= window_size uses window r and no shift. At call time an input of
another size is padded to whole windows and the shifted-window mask is built for the padded size (timm's
`dynamic_mask` behaviour).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vmamba_jax.models.layers import Conv, Dense, DropPath, LayerNorm, Mlp, linear_init
from vmamba_jax.models.registry import register_model
from vmamba_jax.models.vmamba import PatchMerging2D

Dtype = Any


# ---------------------------------------------------------------------------------------------------------------------
# Window helpers (static shapes, numpy where the result is a constant)
# ---------------------------------------------------------------------------------------------------------------------

def window_partition(x: jax.Array, window: tuple[int, int]) -> jax.Array:
    """(B, H, W, C) with H, W multiples of the window -> (B * nW, wh * ww, C), windows in row-major order."""
    b, h, w, c = x.shape
    wh, ww = window
    x = x.reshape(b, h // wh, wh, w // ww, ww, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, c)


def window_reverse(windows: jax.Array, window: tuple[int, int], h: int, w: int) -> jax.Array:
    """Inverse of `window_partition`: (B * nW, wh * ww, C) -> (B, H, W, C)."""
    wh, ww = window
    c = windows.shape[-1]
    x = windows.reshape(-1, h // wh, w // ww, wh, ww, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def relative_position_index(wh: int, ww: int) -> np.ndarray:
    """timm `get_relative_position_index`: (wh*ww, wh*ww) indices into the (2wh-1)(2ww-1) bias table."""
    coords = np.stack(np.meshgrid(np.arange(wh), np.arange(ww), indexing="ij")).reshape(2, -1)
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0)
    rel[:, :, 0] += wh - 1
    rel[:, :, 1] += ww - 1
    rel[:, :, 0] *= 2 * ww - 1
    return rel.sum(-1)


def shifted_window_regions(h: int, w: int, window: tuple[int, int], shift: tuple[int, int]) -> np.ndarray:
    """Region ids of timm `get_attn_mask` for a padded (h, w) map, per window: (nW, N) int32.

    The (nW, N, N) mask itself (0 within a region, -100 across) is built in the graph from these ids, so that large
    windows (32x32 at 1024 px) do not embed a huge constant.
    """
    img = np.zeros((1, h, w, 1), np.float32)
    cnt = 0
    for hs in ((0, -window[0]), (-window[0], -shift[0]), (-shift[0], None)):
        for ws in ((0, -window[1]), (-window[1], -shift[1]), (-shift[1], None)):
            img[:, hs[0]:hs[1], ws[0]:ws[1], :] = cnt
            cnt += 1
    return np.asarray(window_partition(img, window))[..., 0].astype(np.int32)  # (nW, N)


def window_and_shift(resolution: tuple[int, int], window: int, shift: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """timm `_calc_window_shift`: a side no larger than the window becomes one window, unshifted."""
    ws = tuple(r if r <= window else window for r in resolution)
    ss = tuple(0 if r <= w else shift for r, w in zip(resolution, ws))
    return ws, ss


# ---------------------------------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------------------------------

class WindowAttention(nn.Module):
    """W-MSA with relative position bias. x (B * nW, N, C), regions (nW, N) or None -> (B * nW, N, C).

    `regions` are the shifted-window region ids (`shifted_window_regions`): tokens of different regions get -100
    added to their logits, as timm's attn_mask does.

    Logits, bias, mask and softmax are fp32; the q/k/v projections and the two products run in `dtype`.
    """

    dim: int
    num_heads: int
    window_size: tuple[int, int]
    qkv_bias: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, regions: np.ndarray | None = None) -> jax.Array:
        wh, ww = self.window_size
        heads, hd = self.num_heads, self.dim // self.num_heads
        table = self.param("relative_position_bias_table", linear_init, ((2 * wh - 1) * (2 * ww - 1), heads),
                           jnp.float32)
        b_, n, c = x.shape
        qkv = Dense(3 * self.dim, use_bias=self.qkv_bias, dtype=self.dtype, name="qkv")(x)
        qkv = qkv.reshape(b_, n, 3, heads, hd).transpose(2, 0, 3, 1, 4)  # (3, B_, heads, N, hd)
        q, k, v = qkv[0] * (hd ** -0.5), qkv[1], qkv[2]
        attn = jnp.einsum("bhnd,bhmd->bhnm", q, k, preferred_element_type=jnp.float32)
        bias = table[relative_position_index(wh, ww).reshape(-1).astype(np.int32)].reshape(n, n, heads).transpose(2, 0, 1)
        attn = attn + bias[None]
        if regions is not None:
            ids = jnp.asarray(regions)
            mask = jnp.where(ids[:, None, :] != ids[:, :, None], -100.0, 0.0).astype(jnp.float32)  # (nW, N, N)
            nw = ids.shape[0]
            attn = attn.reshape(-1, nw, heads, n, n) + mask[None, :, None]
            attn = attn.reshape(-1, heads, n, n)
        attn = jax.nn.softmax(attn, axis=-1)
        out = jnp.einsum("bhnm,bhmd->bhnd", attn.astype(v.dtype), v)
        out = out.transpose(0, 2, 1, 3).reshape(b_, n, c)
        return Dense(self.dim, dtype=self.dtype, name="proj")(out)

    def extra_flops(self, x: jax.Array, regions=None) -> int:
        b_, n, c = x.shape
        return 2 * b_ * n * n * c  # fvcore: q @ k^T and attn @ v, one MAC each


class SwinTransformerBlock(nn.Module):
    """x + DropPath(SW-MSA(LN(x))), then x + DropPath(Mlp(LN(x))). (B, H, W, C) -> (B, H, W, C).

    `window_size` and `shift_size` are the already adjusted values (see `window_and_shift`).
    """

    dim: int
    num_heads: int
    window_size: tuple[int, int]
    shift_size: tuple[int, int] = (0, 0)
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path: float = 0.0
    dtype: Dtype = jnp.float32

    def _attn(self, x: jax.Array) -> jax.Array:
        _, h, w, _ = x.shape
        window, shift = self.window_size, self.shift_size
        has_shift = any(shift)
        if has_shift:
            x = jnp.roll(x, (-shift[0], -shift[1]), axis=(1, 2))
        pad_h, pad_w = (-h) % window[0], (-w) % window[1]  # timm pads after the shift
        x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
        hp, wp = h + pad_h, w + pad_w
        regions = shifted_window_regions(hp, wp, window, shift) if has_shift else None
        attn = WindowAttention(self.dim, self.num_heads, window, self.qkv_bias, dtype=self.dtype, name="attn")
        x = window_reverse(attn(window_partition(x, window), regions), window, hp, wp)[:, :h, :w]
        if has_shift:
            x = jnp.roll(x, shift, axis=(1, 2))
        return x

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        drop_path = DropPath(self.drop_path)
        x = x + drop_path(self._attn(LayerNorm(name="norm1")(x)), deterministic=not train)
        mlp = Mlp(int(self.dim * self.mlp_ratio), self.dim, act_layer="gelu", dtype=self.dtype, name="mlp")
        return x + drop_path(mlp(LayerNorm(name="norm2")(x)), deterministic=not train)


class SwinTransformerStage(nn.Module):
    """timm `SwinTransformerStage`: optional PatchMerging downsample first, then blocks (odd blocks shifted)."""

    out_dim: int
    depth: int
    num_heads: int
    resolution: tuple[int, int]      # the blocks' (configured) resolution, after the downsample
    window_size: int = 7
    downsample: bool = True
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_paths: Sequence[float] = ()
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.downsample:
            x = PatchMerging2D(self.out_dim, dtype=self.dtype, name="downsample")(x)
        for j in range(self.depth):
            window, shift = window_and_shift(self.resolution, self.window_size,
                                             0 if j % 2 == 0 else self.window_size // 2)
            x = SwinTransformerBlock(self.out_dim, self.num_heads, window, shift, self.mlp_ratio, self.qkv_bias,
                                     drop_path=self.drop_paths[j], dtype=self.dtype, name=f"blocks_{j}")(x, train)
        return x


class PatchEmbed(nn.Module):
    """timm PatchEmbed (NHWC output): Conv k=p s=p named `proj`, then LN named `norm`."""

    embed_dim: int
    patch_size: int = 4
    in_chans: int = 3
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = Conv(self.embed_dim, self.patch_size, stride=self.patch_size, in_features=self.in_chans,
                 dtype=self.dtype, name="proj")(x)
        return LayerNorm(name="norm")(x)


class ClassifierHead(nn.Module):
    """timm `ClassifierHead` on NHWC features: global average pool -> fc."""

    num_classes: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.mean(x, axis=(1, 2))
        if self.num_classes <= 0:
            return x
        return Dense(self.num_classes, dtype=self.dtype, name="fc")(x).astype(jnp.float32)


class SwinTransformer(nn.Module):
    """timm `SwinTransformer` (defaults: Swin-T at 224, window 7). __call__(x (N, H, W, 3), train=False) -> logits.

    `img_size` fixes the per-stage windows (and so the bias-table shapes), as in timm; `window_size` can be scaled with
    the resolution (the VMamba paper's scaling study uses img_size // 32). `dtype` is the compute dtype.
    """

    img_size: int = 224
    patch_size: int = 4
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 96
    depths: Sequence[int] = (2, 2, 6, 2)
    num_heads: Sequence[int] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path_rate: float = 0.1
    dtype: Dtype = jnp.float32

    # timm buffers that older checkpoints store next to the parameters; recomputed here, dropped on load.
    torch_buffers = ("relative_position_index", "attn_mask")
    torch_legacy_renames = ()  # VMamba's legacy key renames (patch_embed.proj, norm, head) must not touch timm keys

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] != self.in_chans:
            raise ValueError(f"SwinTransformer expects channel-last images (N, H, W, {self.in_chans}); got {x.shape}")
        x = PatchEmbed(self.embed_dim, self.patch_size, self.in_chans, dtype=self.dtype, name="patch_embed")(
            x.astype(jnp.float32))
        grid = self.img_size // self.patch_size
        dpr = np.linspace(0.0, self.drop_path_rate, sum(self.depths)).tolist()
        start = 0
        for i, depth in enumerate(self.depths):
            res = (grid // 2 ** i,) * 2
            x = SwinTransformerStage(self.embed_dim * 2 ** i, depth, self.num_heads[i], res, self.window_size,
                                     downsample=i > 0, mlp_ratio=self.mlp_ratio, qkv_bias=self.qkv_bias,
                                     drop_paths=tuple(dpr[start:start + depth]), dtype=self.dtype,
                                     name=f"layers_{i}")(x, train)
            start += depth
            self.sow("intermediates", f"layers.{i}", x)
        x = LayerNorm(name="norm")(x)
        return ClassifierHead(self.num_classes, dtype=self.dtype, name="head")(x)


# Released variants (timm names; params with the 1000-way head; top-1 of the ImageNet-1k-trained weights).
@register_model("swin_tiny_patch4_window7_224", SwinTransformer, params=28_288_354, top1=81.2)
def swin_tiny_patch4_window7_224():
    """Swin-T (timm `swin_tiny_patch4_window7_224`)."""
    return dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.2)


@register_model("swin_small_patch4_window7_224", SwinTransformer, params=49_606_258, top1=83.2)
def swin_small_patch4_window7_224():
    """Swin-S (timm `swin_small_patch4_window7_224`)."""
    return dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.3)


@register_model("swin_base_patch4_window7_224", SwinTransformer, params=87_768_224, top1=83.5)
def swin_base_patch4_window7_224():
    """Swin-B (timm `swin_base_patch4_window7_224`)."""
    return dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), drop_path_rate=0.5)
