"""Res-VMamba (Chen et al., arXiv 2402.15761; ChiShengChen/ResVMamba) in flax.linen: VMamba-S v0 plus a stage shortcut.

The official `VSSM.forward` (spec derivatives.md section 1.2) adds, to the output of each stage that downsamples
(stages 0..2, after the downsample), a 2x2 max-pool of the stage's INPUT projected by a 1x1 conv:

    x_i (B, H, W, C_i) -> layers[i] -> (B, H/2, W/2, C_{i+1})
                       + conv1x1_{C_i -> C_{i+1}}(maxpool2x2(x_i))

The official 1x1 conv is built inside `forward()` on every call: it is never registered, so it has no parameters,
is re-drawn from PyTorch's default init U(+-1/sqrt(C_i)) (weight and bias) on every forward, in training and in
eval, and is never learned. Both behaviours are here:
  * `faithful=False` (default): a learned 1x1 conv per shortcut (`shortcut_{i}`, official-style key
    `shortcut.{i}.weight`), PyTorch default init; +388,416 parameters for VMamba-S. Probably what the paper meant.
  * `faithful=True`: the official behaviour: no parameters (the count equals VMamba-S v0), and a fresh random
    projection on every call, drawn from the "shortcut" RNG stream, so every apply needs
    `rngs={"shortcut": key}` (eval included) and its outputs depend on that key.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from vmamba_jax.models.layers import Conv
from vmamba_jax.models.registry import get_entry, register_model
from vmamba_jax.models.vmamba import VSSM, VSSMBackbone

SHORTCUT_RNG = "shortcut"


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """nn.MaxPool2d(2, 2) (floor mode): (B, H, W, C) -> (B, H//2, W//2, C)."""
    return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


class ResVSSM(VSSM):
    """VMamba (v0 for the released Res-VMamba-S) with the stage shortcut of every downsampling stage.

    __call__(x (N, H, W, 3), train=False) -> logits (N, num_classes). H and W must be multiples of
    patch_size * 2**(num_stages - 1) (32 for the released model): the shortcut's floor-mode max-pool and the
    downsample must give the same size, as in the official code. With `faithful=True`, apply needs
    `rngs={"shortcut": key}`.
    """

    faithful: bool = False

    def _shortcut(self, i: int, x: jax.Array, c_out: int) -> jax.Array:
        """conv1x1(maxpool2x2(x)): (B, H, W, C_in) -> (B, H/2, W/2, c_out)."""
        x = max_pool_2x2(x)
        c_in = x.shape[-1]
        if not self.faithful:
            return Conv(c_out, 1, in_features=c_in, dtype=self.dtype, name=f"shortcut_{i}")(x)
        # init draws a projection too (only shapes matter there); `stages` checked that apply got the stream.
        key = self.make_rng(SHORTCUT_RNG if self.has_rng(SHORTCUT_RNG) else "params")
        # PyTorch's default Conv2d init, weight and bias U(+-1/sqrt(fan_in)), fan_in = C_in for a 1x1 conv.
        bound = 1.0 / math.sqrt(c_in)
        kw, kb = jax.random.split(key)
        w = jax.random.uniform(kw, (c_in, c_out), jnp.float32, -bound, bound)
        b = jax.random.uniform(kb, (c_out,), jnp.float32, -bound, bound)
        y = jnp.einsum("bhwc,cd->bhwd", x.astype(self.dtype), w.astype(self.dtype))
        return y + b.astype(self.dtype)

    def check_input(self, x: jax.Array) -> None:
        super().check_input(x)
        if self.faithful and not self.has_rng(SHORTCUT_RNG) and not self.is_initializing():
            raise ValueError("ResVSSM(faithful=True) draws a fresh random shortcut projection on every call, like the "
                             "official code: pass rngs={'shortcut': key} to apply (in eval too).")
        multiple = self.patch_size * 2 ** (len(self.depths) - 1)
        if x.shape[1] % multiple or x.shape[2] % multiple:
            raise ValueError(f"ResVSSM: input {x.shape[1]}x{x.shape[2]} must be a multiple of {multiple} (patch "
                             "size x 2 per downsampling stage) so the shortcut's max-pool matches the downsample.")

    def stage_shortcut(self, i: int, stage_input: jax.Array, stage_output: jax.Array) -> jax.Array:
        """Adds the shortcut to every stage that downsamples (the official `idx < 3`)."""
        if i == len(self.depths) - 1:
            return stage_output
        return stage_output + self._shortcut(i, stage_input, self.stage_dims[i + 1]).astype(stage_output.dtype)


class ResVSSMBackbone(VSSMBackbone, ResVSSM):
    """Res-VMamba as a backbone: `VSSMBackbone`'s pre-downsample stage features (strides 4/8/16/32, `outnorm{i}`);
    the stage shortcuts feed the next stage as in the classifier. `create_model(name, features_only=True)`."""


@register_model("resvmamba_small", ResVSSM, backbone_cls=ResVSSMBackbone, params=44_805_832, top1=79.54)
def resvmamba_small():
    """Res-VMamba-S: VMamba-S v0 (vssm_small_224: dims 96, depths [2,2,27,2], d_state 16, no MLP, PatchMerging,
    drop path 0.3) plus the stage shortcut, learned (`faithful=False`, 44,805,832 params with a 1000-way head);
    `faithful=True` is the official random projection (44,417,416 params, = VMamba-S v0). top1: CNFOOD-241, from
    scratch (arXiv)."""
    return dict(get_entry("vanilla_vmamba_small").kwargs_fn(), faithful=False)
