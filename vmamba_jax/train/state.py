"""The train state: everything a bitwise resume needs besides the data iterator (saved beside it)."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """step: int32 scalar. params / ema_params: model params (fp32). opt_state: optax state. rng: uint32[2] base key;
    the key of step s is fold_in(rng, s), so no key has to be threaded through and a resume is exact."""

    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any
    rng: jax.Array


def create_train_state(model, tx: optax.GradientTransformation, rng: jax.Array, sample_input: jax.Array,
                       ema: bool = True) -> TrainState:
    """Initialises params (call under jit with out_shardings so params are born sharded)."""
    init_rng, state_rng = jax.random.split(rng)
    params = model.init({"params": init_rng, "dropout": init_rng}, sample_input, train=False)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      ema_params=jax.tree.map(jnp.copy, params) if ema else None, rng=state_rng)


def ema_update(ema_params, params, decay: float):
    """timm ModelEma (v1): ema = decay * ema + (1 - decay) * params, after every optimizer step."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)
