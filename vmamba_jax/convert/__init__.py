"""Official PyTorch checkpoints <-> Flax variables (strict, exact round trip). CLI: `python -m vmamba_jax.convert`."""

from vmamba_jax.convert.core import (  # noqa: F401
    CheckpointMismatchError,
    expected_state_dict_shapes,
    guess_model,
    load_torch_checkpoint,
    to_torch_state_dict,
    torch_key,
)
from vmamba_jax.convert.io import read_state_dict  # noqa: F401
from vmamba_jax.convert.saved import load_converted, save_converted  # noqa: F401
