"""Weights for evaluation: our Orbax training checkpoints (raw or EMA params), official/timm PyTorch files through
the strict converter, or a random init (smoke tests). One entry point: `load_variables(model, spec, ema=...)`.

Our checkpoints are the training engineer's layout (`vmamba_jax.train.checkpoint`): <workdir>/checkpoints/<step>/state
holding the TrainState (step, params, opt_state, ema_params, rng). They are read with a plain
`ocp.StandardCheckpointer().restore` (Orbax's advice for evaluators: no CheckpointManager outside the trainer), and
only `params` / `ema_params` are kept.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict

TORCH_FILES = (".pth", ".pt", ".bin", ".ckpt", ".tar", ".safetensors", ".npz")


def find_state_dir(path: str) -> str:
    """A workdir, its checkpoints/ folder, a step folder or the state item itself -> the Orbax "state" directory
    (the latest step when several exist)."""
    path = os.path.abspath(path)
    if os.path.isdir(os.path.join(path, "checkpoints")):
        path = os.path.join(path, "checkpoints")
    steps = sorted((int(d) for d in os.listdir(path) if d.isdigit() and os.path.isdir(os.path.join(path, d))))
    if steps:
        path = os.path.join(path, str(steps[-1]))
    if os.path.isdir(os.path.join(path, "state")):
        path = os.path.join(path, "state")
    return path


def load_orbax_params(path: str, ema: bool = False) -> dict:
    """params (or ema_params) of one of our checkpoints, as numpy arrays."""
    import orbax.checkpoint as ocp

    state_dir = find_state_dir(path)
    tree = ocp.StandardCheckpointer().restore(state_dir)
    if isinstance(tree, dict) and "params" in tree:
        key = "ema_params" if ema else "params"
        if tree.get(key) is None:
            raise ValueError(f"{state_dir}: checkpoint has no {key!r} (trained without EMA?); drop --ema")
        tree = tree[key]
    elif ema:
        raise ValueError(f"{state_dir}: a bare params tree has no EMA copy; drop --ema")
    return jax.tree.map(np.asarray, tree)


def check_params(params, model, image_size: int = 64) -> None:
    """Raises listing missing/unexpected/mis-shaped leaves if `params` does not fit `model`."""
    want = flatten_dict(jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct(
        (1, image_size, image_size, getattr(model, "in_chans", 3)), jnp.float32))["params"])
    got = flatten_dict(params)
    missing = ["/".join(k) for k in want if k not in got]
    unexpected = ["/".join(k) for k in got if k not in want]
    shapes = ["/".join(k) + f": {got[k].shape} vs {want[k].shape}" for k in want
              if k in got and tuple(got[k].shape) != tuple(want[k].shape)]
    if missing or unexpected or shapes:
        raise ValueError(f"checkpoint does not fit {type(model).__name__}: missing {missing[:8]}, unexpected "
                         f"{unexpected[:8]}, shape mismatches {shapes[:8]} (wrong model name or overrides?)")


def load_variables(model, spec: str | None, *, ema: bool = False, seed: int = 0) -> tuple[dict, str]:
    """-> ({"params": ...}, description). spec: a PyTorch/safetensors/npz file (official or timm names), one of our
    Orbax checkpoint directories, or None / "random" for a random init."""
    if spec in (None, "", "random"):
        x = jnp.zeros((1, 64, 64, getattr(model, "in_chans", 3)), jnp.float32)
        return jax.jit(model.init)(jax.random.key(seed), x), "random init"
    if os.path.isdir(spec):
        params = load_orbax_params(spec, ema=ema)
        check_params(params, model)
        return {"params": params}, f"orbax {find_state_dir(spec)} ({'ema_params' if ema else 'params'})"
    if spec.endswith(TORCH_FILES):
        from vmamba_jax.convert import load_torch_checkpoint

        return load_torch_checkpoint(spec, model, ema=ema), f"converted {spec}" + (" (model_ema)" if ema else "")
    raise ValueError(f"weights {spec!r}: expected a {'/'.join(TORCH_FILES)} file, an Orbax checkpoint directory "
                     "or 'random'")
