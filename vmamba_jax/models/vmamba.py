"""VMamba (Liu et al., NeurIPS 2024) in flax.linen, channel-last: VSSBlock, VSSM (classifier) and VSSMBackbone.

Computes the same function as the official `classification/models/vmamba.py: VSSM` and keeps its parameter names, so
an official state_dict maps onto the Flax tree by renaming alone (`vmamba_jax.convert`): `layers_2/blocks_7/op/in_proj`
is `layers.2.blocks.7.op.in_proj`, and Sequential indices ("0", "2", "5", "7" in the v2 patch embed) are module names.

Shapes for VMamba-T at 224 (x: (N, 224, 224, 3)):
    patch_embed  -> (N, 56, 56, 96)
    layers_0     -> blocks at 56x56x96 (L = 3136), downsample -> (N, 28, 28, 192)
    layers_1     -> blocks at 28x28x192, downsample -> 14x14x384
    layers_2     -> blocks at 14x14x384, downsample -> 7x7x768
    layers_3     -> blocks at 7x7x768 (no downsample)
    classifier   -> LayerNorm, global average pool, head -> (N, num_classes)
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vmamba_jax.models.layers import Conv, Dense, DropPath, LayerNorm, Mlp
from vmamba_jax.models.registry import register_model
from vmamba_jax.models.ss2d import SS2D

Dtype = Any


# ---------------------------------------------------------------------------------------------------------------------
# Stem, downsampling, head
# ---------------------------------------------------------------------------------------------------------------------

class PatchEmbed(nn.Module):
    """v1: Conv k=p s=p (+ LN). v2: Conv k3 s2 (C/2) -> LN -> GELU -> Conv k3 s2 (C) -> LN (for patch_size 4).

    Module names are the official Sequential indices (v1: 0, 2; v2: 0, 2, 5, 7). Note v2's order: norm before GELU.
    """

    embed_dim: int
    patch_size: int = 4
    in_chans: int = 3
    patch_norm: bool = True
    version: str = "v1"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.version == "v1":
            x = Conv(self.embed_dim, self.patch_size, stride=self.patch_size, in_features=self.in_chans,
                     dtype=self.dtype, name="0")(x)
            return LayerNorm(name="2")(x) if self.patch_norm else x
        if self.version == "v2":
            stride = self.patch_size // 2
            k, p = (3, 1) if stride == 2 else (1, 0)
            half = self.embed_dim // 2
            x = Conv(half, k, stride=stride, padding=p, in_features=self.in_chans, dtype=self.dtype, name="0")(x)
            if self.patch_norm:
                x = LayerNorm(name="2")(x)
            x = jax.nn.gelu(x, approximate=False)
            x = Conv(self.embed_dim, k, stride=stride, padding=p, in_features=half, dtype=self.dtype, name="5")(x)
            return LayerNorm(name="7")(x) if self.patch_norm else x
        raise ValueError(f"patchembed_version={self.version!r}; choose 'v1' or 'v2'")


class PatchMerging2D(nn.Module):
    """Downsample v1 (Swin PatchMerging): pad odd H/W at the end, concat the 4 sub-grids, LN(4C), Linear(4C->2C)."""

    out_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h, w = x.shape[1:3]
        if h % 2 or w % 2:
            x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
        x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
        x = LayerNorm(name="norm")(x)
        return Dense(self.out_dim, use_bias=False, dtype=self.dtype, name="reduction")(x)


class Downsample(nn.Module):
    """Downsample v2 (Conv k2 s2 + LN) and v3 (Conv k3 s2 p1 + LN); names "1" and "3" as in the official Sequential."""

    in_dim: int
    out_dim: int
    version: str = "v3"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, p = (2, 0) if self.version == "v2" else (3, 1)
        x = Conv(self.out_dim, k, stride=2, padding=p, in_features=self.in_dim, dtype=self.dtype, name="1")(x)
        return LayerNorm(name="3")(x)


def make_downsample(version: str, in_dim: int, out_dim: int, dtype: Dtype, name: str = "downsample") -> nn.Module:
    if version == "v1":
        return PatchMerging2D(out_dim, dtype=dtype, name=name)
    if version in ("v2", "v3"):
        return Downsample(in_dim, out_dim, version, dtype=dtype, name=name)
    raise ValueError(f"downsample_version={version!r}; choose 'v1', 'v2', 'v3' or 'none'")


class Classifier(nn.Module):
    """norm -> global average pool -> head. (N, H, W, C) -> (N, num_classes)."""

    num_classes: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = LayerNorm(name="norm")(x)
        x = jnp.mean(x, axis=(1, 2))
        if self.num_classes <= 0:
            return x
        return Dense(self.num_classes, dtype=self.dtype, name="head")(x).astype(jnp.float32)

    def extra_flops(self, x: jax.Array) -> int:
        return int(np.prod(x.shape))  # fvcore counts adaptive_avg_pool2d as one flop per input element


# ---------------------------------------------------------------------------------------------------------------------
# Blocks and stages
# ---------------------------------------------------------------------------------------------------------------------

class VSSBlock(nn.Module):
    """Pre-norm residual block: x + DropPath(SS2D(norm(x))), then x + DropPath(Mlp(norm2(x))) if mlp_ratio > 0."""

    hidden_dim: int
    drop_path: float = 0.0
    ssm_d_state: int = 16
    ssm_ratio: float = 2.0
    ssm_dt_rank: Any = "auto"
    ssm_act_layer: str = "silu"
    ssm_conv: int = 3
    ssm_conv_bias: bool = True
    ssm_init: str = "v0"
    forward_type: str = "v2"
    mlp_ratio: float = 4.0
    mlp_act_layer: str = "gelu"
    gmlp: bool = False
    dtype: Dtype = jnp.float32
    scan_implementation: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        drop_path = DropPath(self.drop_path)  # one module, an independent mask per call (as officially)
        op = SS2D(self.hidden_dim, d_state=self.ssm_d_state, ssm_ratio=self.ssm_ratio, dt_rank=self.ssm_dt_rank,
                  act_layer=self.ssm_act_layer, d_conv=self.ssm_conv, conv_bias=self.ssm_conv_bias,
                  forward_type=self.forward_type, ssm_init=self.ssm_init, dtype=self.dtype,
                  scan_implementation=self.scan_implementation, name="op")
        x = x + drop_path(op(LayerNorm(name="norm")(x)), deterministic=not train)
        if self.mlp_ratio > 0:
            mlp = Mlp(int(self.hidden_dim * self.mlp_ratio), self.hidden_dim, act_layer=self.mlp_act_layer,
                      gated=self.gmlp, dtype=self.dtype, name="mlp")
            x = x + drop_path(mlp(LayerNorm(name="norm2")(x)), deterministic=not train)
        return x


class _ScannedBlock(nn.Module):
    """One step of a scanned stage: (x, this block's drop-path rate) -> (x, None), for `nn.scan`."""

    block: Any
    dim: int
    block_kwargs: Any
    train: bool
    dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array, drop_path: jax.Array) -> tuple[jax.Array, None]:
        return self.block(self.dim, drop_path=drop_path, dtype=self.dtype, name="block",
                          **dict(self.block_kwargs or ()))(x, self.train), None


class VSSLayer(nn.Module):
    """One stage (official `layers[i]`): `blocks` then an optional `downsample`.

    Returns (blocks output, downsampled output); the first is what the backbone exposes, the second feeds the next
    stage (equal when there is no downsample).

    `scan_blocks`: the stage's blocks as one `nn.scan` over stacked parameters (MaxText's scan_layers), so XLA
    compiles one block per stage instead of `depth`. Parameters then live under `blocks/block/...` with a leading
    (depth,) axis, not `blocks_{j}/...`; `stack_blocks` / `unstack_blocks` convert between the two (official
    checkpoints convert to the unstacked layout). The function is the same; training draws other drop-path masks.
    """

    dim: int
    out_dim: int
    drop_paths: Sequence[float]
    downsample_version: str = "none"
    block_kwargs: Any = None  # a hashable tuple of (name, value) pairs for the block
    use_checkpoint: bool = False
    dtype: Dtype = jnp.float32
    block: Any = None         # the block class (default VSSBlock; MSVMamba passes its MS3 block)
    scan_blocks: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        block = self.block or VSSBlock
        block_cls = nn.remat(block, static_argnums=(2,)) if self.use_checkpoint else block
        if self.scan_blocks:
            blocks = nn.scan(_ScannedBlock, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                             in_axes=0, length=len(self.drop_paths))
            x, _ = blocks(block_cls, self.dim, self.block_kwargs, train, self.dtype, name="blocks")(
                x, jnp.asarray(self.drop_paths, jnp.float32))
        else:
            kwargs = dict(self.block_kwargs or ())
            for j, dp in enumerate(self.drop_paths):
                x = block_cls(self.dim, drop_path=dp, dtype=self.dtype, name=f"blocks_{j}", **kwargs)(x, train)
        if self.downsample_version == "none":
            return x, x
        return x, make_downsample(self.downsample_version, self.dim, self.out_dim, self.dtype)(x)


def _block_names(stage: dict) -> list[str]:
    return sorted((k for k in stage if re.fullmatch(r"blocks_\d+", k)), key=lambda k: int(k.split("_")[1]))


def stack_blocks(params: dict) -> dict:
    """Params of a model with per-block subtrees (`layers_{i}/blocks_{j}`, the official layout) -> the `scan_blocks`
    layout (`layers_{i}/blocks/block`, each leaf stacked along a new leading (depth,) axis)."""
    def stage(tree):
        names = _block_names(tree)
        if not names:
            return tree
        out = {k: v for k, v in tree.items() if k not in names}
        out["blocks"] = {"block": jax.tree.map(lambda *leaves: jnp.stack(leaves), *[tree[k] for k in names])}
        return out
    return {k: stage(v) if k.startswith("layers_") else v for k, v in params.items()}


def unstack_blocks(params: dict) -> dict:
    """The inverse of `stack_blocks`: `scan_blocks` params -> per-block subtrees (what the converter and the
    official checkpoints use)."""
    def stage(tree):
        if "blocks" not in tree:
            return tree
        stacked = tree["blocks"]["block"]
        depth = jax.tree.leaves(stacked)[0].shape[0]
        out = {k: v for k, v in tree.items() if k != "blocks"}
        out.update({f"blocks_{j}": jax.tree.map(lambda a, j=j: a[j], stacked) for j in range(depth)})
        return out
    return {k: stage(v) if k.startswith("layers_") else v for k, v in params.items()}


# ---------------------------------------------------------------------------------------------------------------------
# VSSM
# ---------------------------------------------------------------------------------------------------------------------

def stage_scan_implementations(scan_implementation, n_stages: int) -> tuple[str | None, ...]:
    """`scan_implementation` as one entry per stage (what `pallas_kernels.ss2d.ss2d_core` gets in that stage).

    None or one name: every stage. A sequence or a comma list ("auto,auto,pallas_mosaic_gpu,pallas_mosaic_gpu"):
    one per stage, "auto" or "" for the platform's pick. Per stage because the best core can depend on the map: on
    the H200 the plain kernel inside XLA's cross-scan and merge beat the fused core in forward+backward at 14x14 and
    7x7 until the fused core had XLA form delta there (benchmarks/results/scan_h200_f813356.md, scan_delta_h200.md)."""
    impl = scan_implementation
    if isinstance(impl, str) and "," in impl:
        impl = impl.split(",")
    if impl is None or isinstance(impl, str):
        return (impl or None,) * n_stages
    impl = tuple(s.strip() or None if isinstance(s, str) else s for s in impl)
    if len(impl) != n_stages:
        raise ValueError(f"scan_implementation names {len(impl)} stages ({impl}) for a model of {n_stages}: give "
                         f"one name for every stage or exactly {n_stages}, comma-separated")
    return impl


class VSSM(nn.Module):
    """The official `VSSM` (field names and defaults are the official constructor's).

    __call__(x (N, H, W, in_chans) float, train=False) -> logits (N, num_classes) float32.
    Each stage's output (after its downsample, the official `layers[i](x)`) is sown as
    `intermediates/layers.{i}`: `model.apply(v, x, mutable=["intermediates"])` returns them.

    Extra (non-official) fields: `dtype`, the compute dtype of matmuls/convs (params stay fp32; scans and norms run
    in fp32), and `scan_implementation`, passed to `pallas_kernels.ss2d.ss2d_core` (one name, or one per stage:
    `stage_scan_implementations`).
    """

    patch_size: int = 4
    in_chans: int = 3
    num_classes: int = 1000
    depths: Sequence[int] = (2, 2, 9, 2)
    dims: Any = (96, 192, 384, 768)
    ssm_d_state: int = 16
    ssm_ratio: float = 2.0
    ssm_dt_rank: Any = "auto"
    ssm_act_layer: str = "silu"
    ssm_conv: int = 3
    ssm_conv_bias: bool = True
    ssm_drop_rate: float = 0.0
    ssm_init: str = "v0"
    forward_type: str = "v2"
    mlp_ratio: float = 4.0
    mlp_act_layer: str = "gelu"
    mlp_drop_rate: float = 0.0
    gmlp: bool = False
    drop_path_rate: float = 0.1
    patch_norm: bool = True
    norm_layer: str = "ln"
    downsample_version: str = "v2"
    patchembed_version: str = "v1"
    use_checkpoint: bool = False
    scan_blocks: bool = False  # not official: each stage's blocks as one nn.scan (compile time; see VSSLayer)
    posembed: bool = False
    imgsize: int = 224
    dtype: Dtype = jnp.float32
    scan_implementation: Any = None  # one name, or one per stage (a tuple or a comma list)

    block = VSSBlock  # the block class of every stage (a class attribute, not a field): derivatives swap it

    def __post_init__(self):
        if self.posembed:
            raise ValueError("posembed=True is not supported: no released VMamba uses a position embedding")
        if self.norm_layer.lower() not in ("ln", "ln2d"):
            raise ValueError(f"norm_layer={self.norm_layer!r}: only 'ln' and 'ln2d' (identical channel-last) are "
                             "supported")
        if self.ssm_drop_rate or self.mlp_drop_rate:
            raise ValueError("ssm_drop_rate/mlp_drop_rate > 0 are not supported (every official config uses 0)")
        super().__post_init__()

    @property
    def stage_dims(self) -> tuple[int, ...]:
        if isinstance(self.dims, int):
            return tuple(self.dims * 2 ** i for i in range(len(self.depths)))
        return tuple(self.dims)

    def min_input_size(self) -> int:
        """Smallest H, W the model accepts: the v1 stem (no padding) needs at least one patch."""
        return self.patch_size if self.patchembed_version == "v1" else 1

    def check_input(self, x: jax.Array) -> None:
        """Clear errors for the usual mistakes (channel-first input, uint8 images, too small)."""
        if x.ndim != 4:
            raise ValueError(f"{type(self).__name__} expects a batch of channel-last images (N, H, W, "
                             f"{self.in_chans}); got shape {x.shape} (rank {x.ndim}). Add a batch axis with "
                             "x[None] for a single image.")
        if x.shape[-1] != self.in_chans:
            hint = (" It looks channel-first: use x.transpose(0, 2, 3, 1)." if x.shape[1] == self.in_chans else
                    f" Pass in_chans={x.shape[-1]} to create_model if that is intended.")
            raise ValueError(f"{type(self).__name__} expects {self.in_chans} channels last (N, H, W, "
                             f"{self.in_chans}); got shape {x.shape}.{hint}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"{type(self).__name__} expects float images (normalised, e.g. with the ImageNet "
                             f"mean/std); got dtype {x.dtype}. Convert with x.astype(jnp.float32) and normalise.")
        m = self.min_input_size()
        if x.shape[1] < m or x.shape[2] < m:
            raise ValueError(f"{type(self).__name__}: input {x.shape[1]}x{x.shape[2]} is smaller than the minimum "
                             f"{m}x{m} that patchembed_version={self.patchembed_version!r} with patch_size="
                             f"{self.patch_size} accepts; resize the images up.")

    def block_kwargs(self) -> tuple:
        return tuple(dict(
            ssm_d_state=self.ssm_d_state, ssm_ratio=self.ssm_ratio, ssm_dt_rank=self.ssm_dt_rank,
            ssm_act_layer=self.ssm_act_layer, ssm_conv=self.ssm_conv, ssm_conv_bias=self.ssm_conv_bias,
            ssm_init=self.ssm_init, forward_type=self.forward_type, mlp_ratio=self.mlp_ratio,
            mlp_act_layer=self.mlp_act_layer, gmlp=self.gmlp, scan_implementation=self.scan_implementation,
        ).items())

    def stage_shortcut(self, i: int, stage_input: jax.Array, stage_output: jax.Array) -> jax.Array:
        """Hook applied to each stage's output (identity here; Res-VMamba adds its stage shortcut)."""
        del i, stage_input
        return stage_output

    def stages(self, x: jax.Array, train: bool) -> list[tuple[int, jax.Array, jax.Array]]:
        """patch_embed and the stages: [(i, pre-downsample features, stage output)] (called from __call__)."""
        self.check_input(x)
        dims = self.stage_dims
        dpr = np.linspace(0.0, self.drop_path_rate, sum(self.depths)).tolist()  # official linspace schedule
        x = PatchEmbed(dims[0], self.patch_size, self.in_chans, self.patch_norm, self.patchembed_version,
                       dtype=self.dtype, name="patch_embed")(x.astype(jnp.float32))
        start, outs = 0, []
        impls = stage_scan_implementations(self.scan_implementation, len(self.depths))
        for i, depth in enumerate(self.depths):
            last = i == len(self.depths) - 1
            kwargs = tuple((k, impls[i] if k == "scan_implementation" else v) for k, v in self.block_kwargs())
            layer = VSSLayer(dims[i], dims[i] if last else dims[i + 1], tuple(dpr[start:start + depth]),
                             downsample_version="none" if last else self.downsample_version,
                             block_kwargs=kwargs, use_checkpoint=self.use_checkpoint,
                             dtype=self.dtype, block=self.block, scan_blocks=self.scan_blocks, name=f"layers_{i}")
            start += depth
            feat, out = layer(x, train)
            x = self.stage_shortcut(i, x, out)
            outs.append((i, feat, x))
        return outs

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for i, _, x in self.stages(x, train):
            self.sow("intermediates", f"layers.{i}", x)
        return Classifier(self.num_classes, dtype=self.dtype, name="classifier")(x)


class VSSMBackbone(VSSM):
    """The official `Backbone_VSSM`: the pre-downsample stage features at strides 4/8/16/32 for detection and
    segmentation, each normalised by `outnorm{i}` (LayerNorm) when `out_norm` is True. No classifier.

    __call__(x (N, H, W, 3)) -> list of (N, H/4, W/4, C0), (N, H/8, W/8, C1), ... for i in out_indices.
    """

    out_indices: Sequence[int] = (0, 1, 2, 3)
    out_norm: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> list[jax.Array]:
        outs = []
        for i, feat, _ in self.stages(x, train):
            if i in self.out_indices:
                outs.append(LayerNorm(name=f"outnorm{i}")(feat) if self.out_norm else feat)
        return outs


# ---------------------------------------------------------------------------------------------------------------------
# Released variants (spec §1.1 and §1.2). Keyword names are the official VSSM's.
# ---------------------------------------------------------------------------------------------------------------------

_V2_COMMON = dict(
    ssm_d_state=1, ssm_dt_rank="auto", ssm_act_layer="silu", ssm_conv=3, ssm_conv_bias=False, ssm_drop_rate=0.0,
    ssm_init="v0", forward_type="v05_noz", mlp_ratio=4.0, mlp_act_layer="gelu", mlp_drop_rate=0.0, gmlp=False,
    patch_norm=True, norm_layer="ln2d", downsample_version="v3", patchembed_version="v2", posembed=False,
)
_V0_COMMON = dict(
    ssm_d_state=16, ssm_ratio=2.0, ssm_dt_rank="auto", ssm_conv_bias=True, forward_type="v0", mlp_ratio=0.0,
    downsample_version="v1", patchembed_version="v1", norm_layer="ln",
)


@register_model("vmamba_tiny_s1l8", VSSM, backbone_cls=VSSMBackbone, params=30_249_064, top1=82.6)
def vmamba_tiny_s1l8():
    """VMamba-T, the headline 82.6 model (vmambav2v_tiny_224)."""
    return dict(_V2_COMMON, dims=96, depths=(2, 2, 8, 2), ssm_ratio=1.0, drop_path_rate=0.2)


@register_model("vmamba_small_s2l15", VSSM, backbone_cls=VSSMBackbone, params=50_147_752, top1=83.6)
def vmamba_small_s2l15():
    """VMamba-S, the headline 83.6 model (vmambav2_small_224)."""
    return dict(_V2_COMMON, dims=96, depths=(2, 2, 15, 2), ssm_ratio=2.0, drop_path_rate=0.3)


@register_model("vmamba_base_s2l15", VSSM, backbone_cls=VSSMBackbone, params=88_557_800, top1=83.9)
def vmamba_base_s2l15():
    """VMamba-B, the headline 83.9 model (vmambav2_base_224)."""
    return dict(_V2_COMMON, dims=128, depths=(2, 2, 15, 2), ssm_ratio=2.0, drop_path_rate=0.6)


@register_model("vmamba_tiny_s2l5", VSSM, backbone_cls=VSSMBackbone, params=30_705_832, top1=82.5)
def vmamba_tiny_s2l5():
    return dict(_V2_COMMON, dims=96, depths=(2, 2, 5, 2), ssm_ratio=2.0, drop_path_rate=0.2)


@register_model("vmamba_small_s1l20", VSSM, backbone_cls=VSSMBackbone, params=49_012_840, top1=83.3)
def vmamba_small_s1l20():
    return dict(_V2_COMMON, dims=96, depths=(2, 2, 20, 2), ssm_ratio=1.0, drop_path_rate=0.3)


@register_model("vmamba_base_s1l20", VSSM, backbone_cls=VSSMBackbone, params=86_614_504, top1=83.8)
def vmamba_base_s1l20():
    return dict(_V2_COMMON, dims=128, depths=(2, 2, 20, 2), ssm_ratio=1.0, drop_path_rate=0.5)


@register_model("vanilla_vmamba_tiny", VSSM, backbone_cls=VSSMBackbone, params=22_893_448, top1=82.2)
def vanilla_vmamba_tiny():
    """Vanilla VMamba-T (v0: d_state 16, gated SS2D, no MLP, PatchMerging)."""
    return dict(_V0_COMMON, dims=96, depths=(2, 2, 9, 2), drop_path_rate=0.2)


@register_model("vanilla_vmamba_small", VSSM, backbone_cls=VSSMBackbone, params=44_417_416, top1=83.5)
def vanilla_vmamba_small():
    return dict(_V0_COMMON, dims=96, depths=(2, 2, 27, 2), drop_path_rate=0.3)


@register_model("vanilla_vmamba_base", VSSM, backbone_cls=VSSMBackbone, params=76_254_056, top1=83.7)
def vanilla_vmamba_base():
    return dict(_V0_COMMON, dims=128, depths=(2, 2, 27, 2), drop_path_rate=0.6)
