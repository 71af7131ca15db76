"""Parameter and FLOP counts, with FLOPs counted the way the official VMamba numbers were (fvcore).

fvcore counts one "flop" per multiply-accumulate of convs and matmuls, 5 per element of an affine LayerNorm, one per
input element of the global average pool, and the selective scan as 9 B L D N + B L D (mamba issue #110); element-wise
activations, adds and the cross-scan/merge are free. We reproduce that by running the model abstractly
(`jax.eval_shape`, no FLOPs are spent) with a method interceptor that counts every Dense, Conv and LayerNorm call
from its shapes, plus whatever a module reports through an `extra_flops(*args)` method (SS2D's projections and scan,
the classifier's pooling).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def count_params(variables) -> int:
    """Number of parameters (the "params" collection, or a bare params tree)."""
    params = variables.get("params", variables) if isinstance(variables, dict) else variables
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))


def _module_flops(module: nn.Module, args, out) -> int:
    if isinstance(module, nn.Dense):
        x = args[0]
        return math.prod(x.shape[:-1]) * x.shape[-1] * module.features
    if isinstance(module, nn.Conv):
        x = args[0]
        k = math.prod(module.kernel_size)
        return math.prod(out.shape) * (x.shape[-1] // module.feature_group_count) * k
    if isinstance(module, nn.LayerNorm):
        return math.prod(args[0].shape) * (5 if module.use_scale or module.use_bias else 4)
    return 0


def flops(model: nn.Module, resolution: int | tuple[int, int] = 224, batch: int = 1, in_chans: int = 3) -> int:
    """FLOPs of one forward pass at `resolution`, counted as the official fvcore numbers (4.91 G for VMamba-T)."""
    h, w = (resolution, resolution) if isinstance(resolution, int) else resolution
    x = jax.ShapeDtypeStruct((batch, h, w, in_chans), jnp.float32)
    total = [0]

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__":
            total[0] += _module_flops(context.module, args, out)
            extra = getattr(context.module, "extra_flops", None)
            if extra is not None:
                total[0] += int(extra(*args))
        return out

    def run(x):
        variables = model.init(jax.random.key(0), x)
        total[0] = 0  # count the apply only (init traces the same calls)
        with nn.intercept_methods(interceptor):
            return model.apply(variables, x)

    jax.eval_shape(run, x)
    return total[0]
