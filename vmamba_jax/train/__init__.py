"""Training system: optimizer (official weight-decay mask), train state + EMA, loss, jitted sharded steps, mesh and
multi-host helpers, Orbax checkpointing, metrics logging, and the loop (`train_and_evaluate`)."""

from vmamba_jax.train.checkpoint import Checkpointer  # noqa: F401
from vmamba_jax.train.loop import evaluate_checkpoint, train_and_evaluate  # noqa: F401
from vmamba_jax.train.mesh import initialize_distributed, make_mesh  # noqa: F401
from vmamba_jax.train.optimizer import SSM_PARAM_NAMES, make_optimizer, warmup_cosine, weight_decay_mask  # noqa: F401
from vmamba_jax.train.state import TrainState, create_train_state  # noqa: F401
