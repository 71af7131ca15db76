"""MSVMamba (Shi et al., "Multi-Scale VMamba", NeurIPS 2024) in flax.linen, channel-last, on the VMamba stack.

Both official code generations (YuHengsss/MSVMamba), selected by `forward_type`:
  * "multiscale_4scan_12": branch master (arXiv v1: Nano / Micro / Tiny). The official builder passes
    sscore_type="multiscale_4scan_12"; we fold that switch into forward_type.
  * "vms" / "vms_noz": branch v2 (NeurIPS "MSVMambav3": Base / Tiny, Small). "_noz" drops the SiLU(z) gate.

MS2D (the multi-scale SS2D), x (B, H, W, C), d = ssm_ratio * C, H1 = ceil(H / 2), W1 = ceil(W / 2):
    in_proj -> x_ [, z = SiLU(z)]
    full-res: x0 = SiLU(dwconv3x3 s1(x_))  -> row-major scan, L = H*W
    low-res:  x1 = SiLU(dwconv7x7 s2(x_))  -> [reversed row-major | column-major | reversed column-major] of x1,
              concatenated into ONE sequence of length 3*H1*W1 and scanned once (the state runs across the route
              boundaries), with one parameter set
    merge:    un-permute and sum the three low-res parts (B, H1, W1, d), upsample to (H, W), add to the full-res output
    -> SE (GAP, d -> d/8 -> d, no bias) -> [* z] -> out_proj
The generations differ in (spec derivatives.md section 2.3, pinned by the parity fixtures):
  | detail               | master (v1)                               | v2 (v3 models)                            |
  | param set 0 / 1      | low-res / full-res                        | full-res / low-res                        |
  | out_norm             | per branch, before the sum                | once, after y_full + up(y_low)            |
  | upsample             | bilinear, align_corners=False             | PyTorch "nearest": src = floor(dst*in/out) |
  | ConvFFN              | pre-norm, expansion 2                     | post-norm x + LN(ConvFFN(x)), expansion 4  |
  | stem / downsample    | v1 (Conv4x4) / PatchMerging2D             | v2 (two Conv3x3 s2) / Conv3x3 s2 (v3)      |

Parameter names are the official ones (`op.conv2d_b1`, `op.se.fc.0`, `convFFN.linear1`, ...), so the strict converter
(`vmamba_jax.convert`) loads official checkpoints unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.selective_scan import selective_scan
from pallas_kernels.ss2d import ssm_inputs
from vmamba_jax.models.layers import Conv, Dense, DropPath, LayerNorm, activation
from vmamba_jax.models.registry import register_model
from vmamba_jax.models.ss2d import (A_logs_init, dt_projs_bias_init, dt_projs_weight_init, resolve_dt_rank,
                                    x_proj_init)
from vmamba_jax.models.vmamba import VSSM, VSSMBackbone

Dtype = Any
K = 2  # parameter sets: one full-res route, one (concatenated) low-res route
LOW_RES_ROUTES = 3

# forward_type -> generation flags.
_FORWARD_TYPES = {
    "multiscale_4scan_12": dict(version="v1", gated=True),
    "vms": dict(version="v3", gated=True),
    "vms_noz": dict(version="v3", gated=False),
}


def parse_ms_forward_type(forward_type: str) -> dict[str, Any]:
    try:
        return dict(_FORWARD_TYPES[forward_type])
    except KeyError:
        raise ValueError(f"MSVMamba forward_type={forward_type!r} is not supported; choose one of "
                         f"{sorted(_FORWARD_TYPES)} ('multiscale_4scan_12': master / v1 models, 'vms' and 'vms_noz': "
                         "the v2 branch's MSVMambav3 models).") from None


# ---------------------------------------------------------------------------------------------------------------------
# Low-res routes and resizing
# ---------------------------------------------------------------------------------------------------------------------

def low_res_scan(x: jax.Array) -> jax.Array:
    """(B, H1, W1, d) -> (B, 3*H1*W1, d): [reversed row-major, column-major, reversed column-major], concatenated."""
    b, h, w, d = x.shape
    row = x.reshape(b, h * w, d)
    col = jnp.swapaxes(x, 1, 2).reshape(b, h * w, d)
    return jnp.concatenate([row[:, ::-1], col, col[:, ::-1]], axis=1)


def low_res_merge(y: jax.Array, h: int, w: int) -> jax.Array:
    """(B, 3*h*w, d) -> (B, h, w, d): undo each route of `low_res_scan` and sum the three."""
    b, _, d = y.shape
    n = h * w
    row_r, col, col_r = y[:, :n], y[:, n:2 * n], y[:, 2 * n:]
    row = row_r[:, ::-1].reshape(b, h, w, d)
    col = col + col_r[:, ::-1]
    return row + jnp.swapaxes(col.reshape(b, w, h, d), 1, 2)


def torch_nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source indices of PyTorch's F.interpolate(mode="nearest"): min(floor(dst * (in/out)), in-1), scale in fp32.

    This is NOT jax.image.resize's "nearest" (half-pixel centres): the two differ whenever out is odd (4 -> 7 at
    224^2), which moves the logits by ~1e-2.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    idx = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, in_size - 1)


def upsample(x: jax.Array, size: tuple[int, int], method: str) -> jax.Array:
    """(B, h, w, d) -> (B, H, W, d), H >= h, W >= w. "bilinear" is F.interpolate(bilinear, align_corners=False)
    (half-pixel centres, as jax.image.resize; always an upsample here, so antialiasing never applies); "nearest" is
    PyTorch's nearest rule (`torch_nearest_indices`)."""
    b, h, w, d = x.shape
    if (h, w) == tuple(size):
        return x
    if method == "bilinear":
        return jax.image.resize(x, (b, size[0], size[1], d), method="bilinear", antialias=False)
    if method == "nearest":
        x = jnp.take(x, torch_nearest_indices(h, size[0]), axis=1)
        return jnp.take(x, torch_nearest_indices(w, size[1]), axis=2)
    raise ValueError(f"upsample method {method!r}; choose 'bilinear' or 'nearest'")


# ---------------------------------------------------------------------------------------------------------------------
# MS2D
# ---------------------------------------------------------------------------------------------------------------------

class SEModule(nn.Module):
    """Squeeze-excitation (official `SEModule(d, reduction=8)`): x * sigmoid(fc2(ReLU(fc1(GAP(x))))), no biases.

    x (B, H, W, d) -> (B, H, W, d). Names fc_0 / fc_2 are the official nn.Sequential indices fc.0 / fc.2.
    """

    channels: int
    reduction: int = 8
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s = jnp.mean(x, axis=(1, 2))
        s = jax.nn.relu(Dense(self.channels // self.reduction, use_bias=False, dtype=self.dtype, name="fc_0")(s))
        s = jax.nn.sigmoid(Dense(self.channels, use_bias=False, dtype=self.dtype, name="fc_2")(s))
        return x * s[:, None, None, :].astype(x.dtype)


class MS2D(nn.Module):
    """Multi-scale 2D selective scan (the official SS2D with the multiscale core). (B, H, W, d_model) in and out.

    Parameters (official names and shapes, K = 2 sets): in_proj (C -> d or 2d, no bias), conv2d (dw 3x3, bias),
    conv2d_b1 (dw 7x7 s2 p3, bias), x_proj_weight (2, R+2N, d), dt_projs_weight (2, d, R), dt_projs_bias (2, d),
    A_logs (2d, N), Ds (2d,), out_norm (LayerNorm(d)), se (fc_0, fc_2), out_proj (d -> C, no bias).
    """

    d_model: int
    d_state: int = 1
    ssm_ratio: float = 2.0
    dt_rank: Any = "auto"
    act_layer: str = "silu"
    d_conv: int = 3
    conv_bias: bool = True
    forward_type: str = "multiscale_4scan_12"
    add_se: bool = True
    ssm_init: str = "v0"
    dtype: Dtype = jnp.float32
    scan_implementation: str | None = None

    @property
    def d_inner(self) -> int:
        return int(self.ssm_ratio * self.d_model)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        ft = parse_ms_forward_type(self.forward_type)
        v1 = ft["version"] == "v1"
        D, N, R = self.d_inner, self.d_state, resolve_dt_rank(self.dt_rank, self.d_model)
        act = activation(self.act_layer)
        b, h, w, _ = x.shape

        # fp32 SSM parameters; set order is the generation's: v1 [low, full], v3 [full, low].
        x_proj_weight = self.param("x_proj_weight", x_proj_init(D), (K, R + 2 * N, D))
        dt_projs_weight = self.param("dt_projs_weight", dt_projs_weight_init(R, self.ssm_init), (K, D, R))
        dt_projs_bias = self.param("dt_projs_bias", dt_projs_bias_init(self.ssm_init), (K, D))
        A_logs = self.param("A_logs", A_logs_init(self.ssm_init), (K * D, N))
        Ds = self.param("Ds", nn.initializers.ones, (K * D,))

        x = Dense(2 * D if ft["gated"] else D, use_bias=False, dtype=self.dtype, name="in_proj")(x)
        if ft["gated"]:
            x, z = jnp.split(x, 2, axis=-1)
            z = act(z)
        # Both depthwise convs read the same pre-activation in_proj output.
        x_full = act(Conv(D, self.d_conv, padding=(self.d_conv - 1) // 2, groups=D, use_bias=self.conv_bias,
                          in_features=D, dtype=self.dtype, name="conv2d")(x))
        x_low = act(Conv(D, 7, stride=2, padding=3, groups=D, use_bias=self.conv_bias, in_features=D,
                         dtype=self.dtype, name="conv2d_b1")(x))
        h1, w1 = x_low.shape[1:3]

        # One selective-scan call for both branches (groups = parameter sets): each route is padded at its END to the
        # longer length. A causal scan's outputs before the padding do not depend on it, and the padded outputs are
        # dropped (zero cotangents), so values and gradients are exactly those of two separate scans.
        seq_full = x_full.reshape(b, h * w, D)
        seq_low = low_res_scan(x_low)
        L_full, L_low = seq_full.shape[1], seq_low.shape[1]
        L = max(L_full, L_low)

        def pad(s):
            return jnp.pad(s, ((0, 0), (0, L - s.shape[1]), (0, 0)))

        seqs = [pad(seq_low), pad(seq_full)] if v1 else [pad(seq_full), pad(seq_low)]
        xs = jnp.stack(seqs, axis=1)                                           # (B, K, L, D)
        dts, bs, cs = ssm_inputs(xs, x_proj_weight, dt_projs_weight)

        def channels_first(t):  # (B, K, L, D) -> (B, K*D, L), the op's layout
            return jnp.swapaxes(t, 2, 3).reshape(b, K * D, L)

        ys = selective_scan(
            channels_first(xs), channels_first(dts), -jnp.exp(A_logs.astype(jnp.float32)), bs, cs,
            Ds.astype(jnp.float32), dt_projs_bias.reshape(-1).astype(jnp.float32), True,
            implementation=self.scan_implementation)
        ys = jnp.swapaxes(ys.reshape(b, K, D, L), 2, 3)                        # (B, K, L, D) fp32
        y_low, y_full = (ys[:, 0], ys[:, 1]) if v1 else (ys[:, 1], ys[:, 0])
        y_full, y_low = y_full[:, :L_full], y_low[:, :L_low]

        out_norm = LayerNorm(name="out_norm")  # one module, shared by both branches on master
        if v1:
            # master: norm each branch per token (then back to the compute dtype, official `.to(x.dtype)`), merge.
            y_full = out_norm(y_full).astype(x.dtype).reshape(b, h, w, D)
            y_low = low_res_merge(out_norm(y_low).astype(x.dtype), h1, w1)
            y = y_full + upsample(y_low, (h, w), "bilinear")
        else:
            # v2: merge in fp32, one norm on the sum.
            y = y_full.reshape(b, h, w, D) + upsample(low_res_merge(y_low, h1, w1), (h, w), "nearest")
            y = out_norm(y).astype(x.dtype)
        if self.add_se:
            y = SEModule(D, 8, dtype=self.dtype, name="se")(y)
        if ft["gated"]:
            y = y * z
        return Dense(self.d_model, use_bias=False, dtype=self.dtype, name="out_proj")(y)

    def extra_flops(self, x: jax.Array) -> int:
        """fvcore-style FLOPs of the projections and scans (9 B L D N + B L D per scan); Dense/Conv/LN/SE are
        counted by the interceptor."""
        b, h, w, _ = x.shape
        D, N, R = self.d_inner, self.d_state, resolve_dt_rank(self.dt_rank, self.d_model)
        L = h * w + LOW_RES_ROUTES * math.ceil(h / 2) * math.ceil(w / 2)
        return b * L * D * (R + 2 * N) + b * L * R * D + 9 * b * L * D * N + b * L * D


# ---------------------------------------------------------------------------------------------------------------------
# ConvFFN and the MS3 block
# ---------------------------------------------------------------------------------------------------------------------

class ConvFFN(nn.Module):
    """Official `ConvFFN`: h = linear1(x) (1x1 conv); h = h + dwc(h) (3x3 depthwise); GELU; linear2 (1x1 conv).
    (B, H, W, C) -> (B, H, W, C); all convs with bias, PyTorch default init. Dropout is 0 in every released config."""

    channels: int
    expansion: int = 2
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        hidden = self.channels * self.expansion
        h = Conv(hidden, 1, in_features=self.channels, dtype=self.dtype, name="linear1")(x)
        h = h + Conv(hidden, 3, padding=1, groups=hidden, in_features=hidden, dtype=self.dtype, name="dwc")(h)
        h = jax.nn.gelu(h, approximate=False)
        return Conv(self.channels, 1, in_features=hidden, dtype=self.dtype, name="linear2")(h)


class MSVSSBlock(nn.Module):
    """MS3 block. v1: x + DP(MS2D(norm(x))), then x + DP(ConvFFN(norm2(x))) (pre-norm).
    v3: the same SSM branch, then x + DP(norm2(ConvFFN(x))) (the official v2 branch's post-norm ConvFFN)."""

    hidden_dim: int
    drop_path: float = 0.0
    ssm_d_state: int = 1
    ssm_ratio: float = 2.0
    ssm_dt_rank: Any = "auto"
    ssm_act_layer: str = "silu"
    ssm_conv: int = 3
    ssm_conv_bias: bool = True
    ssm_init: str = "v0"
    forward_type: str = "multiscale_4scan_12"
    add_se: bool = True
    conv_ffn_ratio: int = 2
    dtype: Dtype = jnp.float32
    scan_implementation: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        post_norm_ffn = parse_ms_forward_type(self.forward_type)["version"] == "v3"
        drop_path = DropPath(self.drop_path)  # one module, an independent mask per call (as officially)
        op = MS2D(self.hidden_dim, d_state=self.ssm_d_state, ssm_ratio=self.ssm_ratio, dt_rank=self.ssm_dt_rank,
                  act_layer=self.ssm_act_layer, d_conv=self.ssm_conv, conv_bias=self.ssm_conv_bias,
                  forward_type=self.forward_type, add_se=self.add_se, ssm_init=self.ssm_init, dtype=self.dtype,
                  scan_implementation=self.scan_implementation, name="op")
        x = x + drop_path(op(LayerNorm(name="norm")(x)), deterministic=not train)
        ffn = ConvFFN(self.hidden_dim, self.conv_ffn_ratio, dtype=self.dtype, name="convFFN")
        if post_norm_ffn:
            x = x + drop_path(LayerNorm(name="norm2")(ffn(x)), deterministic=not train)
        else:
            x = x + drop_path(ffn(LayerNorm(name="norm2")(x)), deterministic=not train)
        return x


# ---------------------------------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------------------------------

class MSVSSM(VSSM):
    """MSVMamba classifier: the VMamba `VSSM` (stem, downsampling, head, field names) with MS3 blocks in every stage
    (the official MS_STAGE [0, 1, 2, 3]).

    __call__(x (N, H, W, in_chans) float, train=False) -> logits (N, num_classes) fp32; stage outputs are sown as
    `intermediates/layers.{i}` like VSSM. Extra fields: `add_se` (SE in MS2D) and `conv_ffn_ratio` (ConvFFN
    expansion: 2 on master, 4 in the v3 models). ConvFFN replaces the MLP, so `mlp_ratio` must stay 0.
    """

    ssm_d_state: int = 1
    forward_type: str = "multiscale_4scan_12"
    mlp_ratio: float = 0.0
    add_se: bool = True
    conv_ffn_ratio: int = 2

    block = MSVSSBlock

    def __post_init__(self):
        parse_ms_forward_type(self.forward_type)
        if self.mlp_ratio:
            raise ValueError(f"MSVSSM: mlp_ratio={self.mlp_ratio}: MSVMamba blocks use a ConvFFN (conv_ffn_ratio) "
                             "instead of an MLP; leave mlp_ratio=0.")
        super().__post_init__()

    def block_kwargs(self) -> tuple:
        return tuple(dict(
            ssm_d_state=self.ssm_d_state, ssm_ratio=self.ssm_ratio, ssm_dt_rank=self.ssm_dt_rank,
            ssm_act_layer=self.ssm_act_layer, ssm_conv=self.ssm_conv, ssm_conv_bias=self.ssm_conv_bias,
            ssm_init=self.ssm_init, forward_type=self.forward_type, add_se=self.add_se,
            conv_ffn_ratio=self.conv_ffn_ratio, scan_implementation=self.scan_implementation,
        ).items())


class MSVSSMBackbone(VSSMBackbone, MSVSSM):
    """MSVMamba as a backbone (detection / segmentation): `VSSMBackbone`'s pre-downsample stage features at strides
    4/8/16/32 (with `outnorm{i}`), computed by MSVSSM's MS3 stages. `create_model(name, features_only=True)`."""


# ---------------------------------------------------------------------------------------------------------------------
# Released variants (spec derivatives.md section 2). Keyword names are the official VSSM's.
# ---------------------------------------------------------------------------------------------------------------------

_V1_COMMON = dict(  # master, classification/configs/ms_vssm/vssm_*_224_ms.yaml
    ssm_d_state=1, ssm_ratio=2.0, ssm_dt_rank="auto", ssm_conv=3, ssm_conv_bias=True,
    forward_type="multiscale_4scan_12", mlp_ratio=0.0, add_se=True, conv_ffn_ratio=2, patchembed_version="v1",
    downsample_version="v1", norm_layer="ln", drop_path_rate=0.2,
)
_V3_COMMON = dict(  # branch v2, classification/configs/msv2/msvmambav3_*_224.yaml
    ssm_d_state=1, ssm_ratio=1.0, ssm_dt_rank="auto", ssm_conv=3, ssm_conv_bias=True, forward_type="vms_noz",
    mlp_ratio=0.0, add_se=True, conv_ffn_ratio=4, patchembed_version="v2", downsample_version="v3",
    norm_layer="ln2d",
)


@register_model("msvmamba_nano", MSVSSM, backbone_cls=MSVSSMBackbone, params=6_864_136, top1=77.3)
def msvmamba_nano():
    """MSVMamba-Nano (master, vssm_nano_224_ms)."""
    return dict(_V1_COMMON, dims=48, depths=(1, 2, 5, 2))


@register_model("msvmamba_micro", MSVSSM, backbone_cls=MSVSSMBackbone, params=11_879_272, top1=79.8)
def msvmamba_micro():
    """MSVMamba-Micro (master, vssm_micro_224_ms)."""
    return dict(_V1_COMMON, dims=64, depths=(1, 2, 5, 2))


@register_model("msvmamba_tiny", MSVSSM, backbone_cls=MSVSSMBackbone, params=33_046_312, top1=82.8)
def msvmamba_tiny():
    """MSVMamba-Tiny (master, vssm_tiny_224_ms; the code builds 33.05M, the yaml comment says 33.08M)."""
    return dict(_V1_COMMON, dims=96, depths=(1, 2, 9, 2))


@register_model("msvmamba_v3_tiny", MSVSSM, backbone_cls=MSVSSMBackbone, params=32_263_720, top1=83.0)
def msvmamba_v3_tiny():
    """MSVMambav3-Tiny (branch v2, msvmambav3_tiny_224)."""
    return dict(_V3_COMMON, dims=96, depths=(2, 2, 9, 2), drop_path_rate=0.2)


@register_model("msvmamba_v3_small", MSVSSM, backbone_cls=MSVSSMBackbone, params=50_216_296, top1=84.1)
def msvmamba_v3_small():
    """MSVMambav3-Small (branch v2, msvmambav3_small_224)."""
    return dict(_V3_COMMON, dims=96, depths=(2, 3, 20, 2), drop_path_rate=0.4)


@register_model("msvmamba_v3_base", MSVSSM, backbone_cls=MSVSSMBackbone, params=90_591_976, top1=84.4)
def msvmamba_v3_base():
    """MSVMambav3-Base (branch v2, msvmambav3_base_224; keeps the SiLU(z) gate: forward_type 'vms')."""
    return dict(_V3_COMMON, dims=128, depths=(2, 4, 18, 2), forward_type="vms", drop_path_rate=0.5)
