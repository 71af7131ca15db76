"""SS2D, the 2D selective-scan mixer of VMamba (official `classification/models/vmamba.py: SS2D`), channel-last.

    x (B, H, W, C) -> in_proj -> [split z] -> depthwise conv -> act -> SS2D core (4 scan orders, S6, merge)
      -> out_norm (fp32) -> cast -> [* act(z)] -> out_proj -> (B, H, W, C)

Forward types (`forward_type`, as in the official code):
  * "v0": the vanilla model: gated (y = LN(y) * SiLU(z)), scan inputs forced to fp32, no cast after out_norm.
  * the v2 family "v01".."v05", "v2", "v3": the same function (they differ only in CUDA backend / einsum vs conv1d),
    with postfixes "_noz" (no z branch), "_nozact" (z not activated), "_oact" (GELU on the output), "_no32" (ignored:
    our scan math is always fp32). The released v2 models use "v05_noz".
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from pallas_kernels.ss2d import ss2d_core
from vmamba_jax.models.layers import Conv, Dense, LayerNorm, activation

Dtype = Any
K = 4  # scan directions

_V2_FAMILY = ("v01", "v02", "v03", "v04", "v05", "v2", "v3")
_POSTFIXES = ("_no32", "_oact", "_noz", "_nozact")  # peeled off the end, in the official order


def parse_forward_type(forward_type: str) -> dict[str, Any]:
    """Splits an official forward_type string into flags; raises with the supported list for anything else."""
    if forward_type == "v0":
        return dict(version="v0", gated=True, z_act=True, out_act=False)
    rest, flags = forward_type, {}
    for postfix in _POSTFIXES:
        if rest.endswith(postfix):
            flags[postfix] = True
            rest = rest[: -len(postfix)]
    if rest not in _V2_FAMILY:
        raise ValueError(
            f"forward_type={forward_type!r} is not supported. Supported: 'v0' and {list(_V2_FAMILY)} with optional "
            f"postfixes {list(_POSTFIXES)} (the released VMamba v2 models use 'v05_noz', the vanilla ones 'v0'). "
            "Out-norm ablations (_onnone, _ondwconv3, ...), xv*/m0 and the 1D/bidirectional scan ablations are not "
            "implemented.")
    return dict(version="v2", gated=not flags.get("_noz", False), z_act=not flags.get("_nozact", False),
                out_act=flags.get("_oact", False))


def resolve_dt_rank(dt_rank: int | str, d_model: int) -> int:
    """"auto" is ceil(C / 16) of the block width C (not of d_inner)."""
    return math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)


# ---------------------------------------------------------------------------------------------------------------------
# Mamba initialisation (official `mamba_init`, ssm_init="v0"; "v1"/"v2" are the ablation inits).
# ---------------------------------------------------------------------------------------------------------------------

def x_proj_init(d_inner: int):
    """nn.Linear(d_inner, R + 2N, bias=False) default init, U(+-1/sqrt(d_inner)); never re-initialised officially."""
    bound = 1.0 / math.sqrt(d_inner)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def dt_projs_weight_init(dt_rank: int, ssm_init: str = "v0", dt_scale: float = 1.0):
    if ssm_init == "v0":
        bound = dt_rank ** -0.5 * dt_scale
        return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)
    if ssm_init == "v1":
        return lambda key, shape, dtype=jnp.float32: 0.1 * jax.random.normal(key, shape, dtype)
    return lambda key, shape, dtype=jnp.float32: 0.1 * jax.random.uniform(key, shape, dtype)


def dt_projs_bias_init(ssm_init: str = "v0", dt_min: float = 1e-3, dt_max: float = 1e-1, dt_init_floor: float = 1e-4):
    """v0: softplus^-1(dt) with dt = exp(U(log dt_min, log dt_max)) clamped at dt_init_floor, so softplus(bias) = dt."""
    if ssm_init == "v0":
        def init(key, shape, dtype=jnp.float32):
            u = jax.random.uniform(key, shape, jnp.float32)
            dt = jnp.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
            dt = jnp.maximum(dt, dt_init_floor)
            return (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)
        return init
    if ssm_init == "v1":
        return lambda key, shape, dtype=jnp.float32: 0.1 * jax.random.normal(key, shape, dtype)
    return lambda key, shape, dtype=jnp.float32: 0.1 * jax.random.uniform(key, shape, dtype)


def A_logs_init(ssm_init: str = "v0"):
    """v0: S4D-real, A_logs[c, n] = log(n + 1) (all zeros when d_state = 1, i.e. A = -1)."""
    if ssm_init == "v1":
        return lambda key, shape, dtype=jnp.float32: jax.random.normal(key, shape, dtype)
    if ssm_init == "v2":
        return lambda key, shape, dtype=jnp.float32: jnp.zeros(shape, dtype)

    def init(key, shape, dtype=jnp.float32):
        del key
        return jnp.broadcast_to(jnp.log(jnp.arange(1, shape[-1] + 1, dtype=jnp.float32)), shape).astype(dtype)

    return init


# ---------------------------------------------------------------------------------------------------------------------
# SS2D
# ---------------------------------------------------------------------------------------------------------------------

class SS2D(nn.Module):
    """2D selective scan. Input and output (B, H, W, d_model).

    Parameters keep the official names and shapes (so checkpoints map one to one):
      in_proj (C -> d_inner or 2*d_inner, no bias), conv2d (depthwise k x k), x_proj_weight (K, R+2N, d_inner),
      dt_projs_weight (K, d_inner, R), dt_projs_bias (K, d_inner), A_logs (K*d_inner, N), Ds (K*d_inner,),
      out_norm (LayerNorm(d_inner)), out_proj (d_inner -> C, no bias).
    """

    d_model: int
    d_state: int = 16
    ssm_ratio: float = 2.0
    dt_rank: Any = "auto"
    act_layer: str = "silu"
    d_conv: int = 3
    conv_bias: bool = True
    forward_type: str = "v2"
    ssm_init: str = "v0"
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    dt_scale: float = 1.0
    dtype: Dtype = jnp.float32
    scan_implementation: str | None = None

    @property
    def d_inner(self) -> int:
        return int(self.ssm_ratio * self.d_model)

    @property
    def rank(self) -> int:
        return resolve_dt_rank(self.dt_rank, self.d_model)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        ft = parse_forward_type(self.forward_type)
        D, N, R = self.d_inner, self.d_state, self.rank
        act = activation(self.act_layer)

        # The SSM parameters, fp32, with the official names and shapes.
        x_proj_weight = self.param("x_proj_weight", x_proj_init(D), (K, R + 2 * N, D))
        A_logs = self.param("A_logs", A_logs_init(self.ssm_init), (K * D, N))
        Ds = self.param("Ds", nn.initializers.ones, (K * D,))
        dt_projs_weight = self.param(
            "dt_projs_weight", dt_projs_weight_init(R, self.ssm_init, self.dt_scale), (K, D, R))
        dt_projs_bias = self.param(
            "dt_projs_bias", dt_projs_bias_init(self.ssm_init, self.dt_min, self.dt_max, self.dt_init_floor), (K, D))

        x = Dense(D * 2 if ft["gated"] else D, use_bias=False, dtype=self.dtype, name="in_proj")(x)
        if ft["gated"]:
            x, z = jnp.split(x, 2, axis=-1)
            if ft["z_act"]:
                z = act(z)
        if self.d_conv > 1:
            x = Conv(D, self.d_conv, padding=(self.d_conv - 1) // 2, groups=D, use_bias=self.conv_bias,
                     in_features=D, dtype=self.dtype, name="conv2d")(x)
        x = act(x)
        # v0 forces fp32 scan inputs; the v2 family feeds the compute dtype and gets fp32 back (oflex).
        core_in = x.astype(jnp.float32) if ft["version"] == "v0" else x
        y = ss2d_core(core_in, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds,
                      implementation=self.scan_implementation)
        y = LayerNorm(name="out_norm")(y)
        if ft["version"] == "v2":
            y = y.astype(x.dtype)  # official `.to(x.dtype)`: back to the compute dtype after the fp32 norm
            if ft["out_act"]:
                y = jax.nn.gelu(y, approximate=False)
        if ft["gated"]:
            y = y * z
        return Dense(self.d_model, use_bias=False, dtype=self.dtype, name="out_proj")(y)

    def extra_flops(self, x: jax.Array) -> int:
        """FLOPs the official fvcore count gives the SS2D core: x_proj and dt_proj (grouped conv1d) and the scan
        (9 B L D N + B L D, D = K * d_inner; mamba issue #110). Dense/Conv/LayerNorm submodules are counted apart."""
        b, h, w, _ = x.shape
        L, D, N, R = h * w, self.d_inner, self.d_state, self.rank
        x_proj = b * K * L * D * (R + 2 * N)
        dt_proj = b * K * L * R * D
        scan = 9 * b * L * K * D * N + b * K * D * L
        return x_proj + dt_proj + scan
