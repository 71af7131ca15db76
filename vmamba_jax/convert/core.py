"""Strict conversion between official PyTorch state_dicts and our Flax variables.

The Flax tree keeps the official names, so the mapping is mechanical:
  * path components `layers_2`, `blocks_7` <-> `layers.2`, `blocks.7`; every other component is kept;
  * leaves: `kernel` <-> `weight` (Dense (in, out) <-> (out, in); Conv HWIO <-> OIHW), LayerNorm `scale` <->
    `weight`, `bias` <-> `bias`, raw SS2D parameters (x_proj_weight, A_logs, Ds, dt_projs_*) unchanged.
The set of keys a model expects comes from its own abstract init (`jax.eval_shape`), so there is no second copy of
the architecture here. Loading is strict: every missing, unexpected or mis-shaped key is reported by name with the
likely cause, and nothing is silently skipped.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from vmamba_jax.convert.io import read_state_dict

# Legacy key names of the oldest v0 checkpoints (official `VSSM._load_from_state_dict`), applied in order.
LEGACY_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^patch_embed\.proj\.", "patch_embed.0."),
    (r"^patch_embed\.norm\.", "patch_embed.2."),
    (r"(\.blocks\.\d+)\.ln_1\.", r"\1.norm."),
    (r"(\.blocks\.\d+)\.self_attention\.", r"\1.op."),
    (r"^norm\.", "classifier.norm."),
    (r"^head\.", "classifier.head."),
)


class CheckpointMismatchError(ValueError):
    """Raised when a state_dict does not fit the model; the message lists every problem and its likely cause."""


# ---------------------------------------------------------------------------------------------------------------------
# Key and array mapping
# ---------------------------------------------------------------------------------------------------------------------

def torch_key(path: Sequence[str]) -> str:
    """Flax param path (without the 'params' collection) -> official state_dict key."""
    *modules, leaf = path
    parts = [re.sub(r"^(.*)_(\d+)$", r"\1.\2", m) for m in modules]
    leaf = {"kernel": "weight", "scale": "weight"}.get(leaf, leaf)
    return ".".join(parts + [leaf])


def to_torch_array(path: Sequence[str], x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if path[-1] == "kernel":
        if x.ndim == 2:
            return x.T                                # Dense (in, out) -> Linear (out, in)
        if x.ndim == 4:
            return x.transpose(3, 2, 0, 1)            # Conv HWIO -> OIHW
    return x


def from_torch_array(path: Sequence[str], x: np.ndarray, target_shape: tuple[int, ...]) -> np.ndarray:
    x = np.asarray(x)
    if path[-1] == "kernel":
        if len(target_shape) == 2 and x.ndim == 4 and x.shape[2:] == (1, 1):
            x = x[:, :, 0, 0]                         # Linear2d also accepts (out, in, 1, 1) weights
        if x.ndim == 2:
            return x.T
        if x.ndim == 4:
            return x.transpose(2, 3, 1, 0)            # OIHW -> HWIO (depthwise (D,1,k,k) -> (k,k,1,D))
    return x


def apply_legacy_renames(state_dict: Mapping[str, Any], renames=LEGACY_RENAMES) -> dict[str, Any]:
    out = {}
    for k, v in state_dict.items():
        for pattern, repl in renames:
            k = re.sub(pattern, repl, k)
        out[k] = v
    return out


def abstract_params(model: nn.Module, image_size: int = 64) -> dict:
    """The model's parameter shapes, from an abstract init (no memory, no FLOPs)."""
    x = jax.ShapeDtypeStruct((1, image_size, image_size, getattr(model, "in_chans", 3)), jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), x)["params"]


def expected_state_dict_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """{official key: official shape} that `model` expects, in the model's parameter order."""
    flat = flatten_dict(abstract_params(model))
    return {torch_key(p): to_torch_array(p, np.empty(v.shape, np.uint8)).shape for p, v in flat.items()}


# ---------------------------------------------------------------------------------------------------------------------
# Diagnosis of mismatches
# ---------------------------------------------------------------------------------------------------------------------

def _diagnose(model: nn.Module, missing: list[str], unexpected: list[str],
              mismatched: list[tuple[str, tuple, tuple]]) -> list[str]:
    """Turns key/shape differences into likely causes, phrased as the fix."""
    hints = []
    mm = {k: (want, got) for k, want, got in mismatched}
    cfg = {f: getattr(model, f) for f in ("ssm_ratio", "ssm_d_state", "forward_type", "num_classes", "mlp_ratio",
                                          "depths", "patchembed_version", "downsample_version") if hasattr(model, f)}

    in_proj = [(k, w, g) for k, (w, g) in mm.items() if k.endswith("op.in_proj.weight")]
    if in_proj:
        k, want, got = in_proj[0]
        ratio = got[0] / got[1]
        hints.append(
            f"{k}: checkpoint {got} vs model {want}: the checkpoint's in_proj maps C={got[1]} to {got[0]} channels, "
            f"i.e. ssm_ratio {ratio:g} with a no-z forward type (or ssm_ratio {ratio / 2:g} with a gated one); the "
            f"model has ssm_ratio={cfg.get('ssm_ratio')}, forward_type={cfg.get('forward_type')!r}. The usual cause is "
            "loading an s2 (ssm_ratio 2) checkpoint into an s1 model or the reverse: pick the matching model name "
            f"(e.g. vmamba_small_s2l15 vs vmamba_small_s1l20) or pass ssm_ratio={ratio:g}.")
    a_logs = [(k, w, g) for k, (w, g) in mm.items() if k.endswith("op.A_logs")]
    if a_logs:
        k, want, got = a_logs[0]
        if want[1] != got[1]:
            hints.append(f"{k}: checkpoint d_state {got[1]} vs model ssm_d_state={want[1]}: pass ssm_d_state={got[1]}"
                         " (v2 models use 1, vanilla v0 models 16).")
    head = mm.get("classifier.head.weight")
    if head:
        hints.append(f"classifier.head: checkpoint has {head[1][0]} classes, model num_classes={head[0][0]}: pass "
                     f"num_classes={head[1][0]}, or exclude=('classifier.head',) to keep a fresh head for fine-tuning.")
    if any(".mlp." in k or ".norm2." in k for k in missing) and not any(".mlp." in k for k in unexpected):
        hints.append(f"the model has MLP branches the checkpoint lacks: pass mlp_ratio=0 (model has "
                     f"mlp_ratio={cfg.get('mlp_ratio')}).")
    if any(".mlp." in k for k in unexpected) and not any(".mlp." in k for k in missing):
        hints.append("the checkpoint has MLP branches the model lacks: pass mlp_ratio=4.0.")
    blocks = {}
    for k in unexpected + missing:
        m = re.match(r"layers\.(\d+)\.blocks\.(\d+)\.", k)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if blocks and "depths" in cfg:
        depths_ckpt = list(cfg["depths"])
        for i, js in blocks.items():
            if any(f"layers.{i}.blocks.{j}." in k for j in js for k in unexpected):
                depths_ckpt[i] = max(js) + 1
            elif any(f"layers.{i}.blocks.{j}." in k for j in js for k in missing):
                depths_ckpt[i] = min(js)
        if depths_ckpt != list(cfg["depths"]):
            hints.append(f"the number of blocks differs: checkpoint depths look like {depths_ckpt}, model depths="
                         f"{list(cfg['depths'])}: pick the matching model (e.g. s1l8 has [2,2,8,2], s2l15 "
                         "[2,2,15,2]) or pass depths=...")
    if any(k.startswith("patch_embed.5.") for k in unexpected):
        hints.append("the checkpoint has the v2 patch embed (two 3x3 convs): pass patchembed_version='v2'.")
    if any(k.startswith("patch_embed.5.") for k in missing):
        hints.append("the checkpoint has the v1 patch embed (one 4x4 conv): pass patchembed_version='v1'.")
    if any(".downsample.reduction." in k for k in unexpected):
        hints.append("the checkpoint downsamples with PatchMerging: pass downsample_version='v1'.")
    if any(".downsample.reduction." in k for k in missing):
        hints.append("the checkpoint downsamples with a strided conv: pass downsample_version='v3' (or 'v2').")
    if any(k.endswith("op.conv2d.bias") for k in unexpected):
        hints.append("the checkpoint's depthwise convs have a bias: pass ssm_conv_bias=True.")
    if any(k.endswith("op.conv2d.bias") for k in missing):
        hints.append("the checkpoint's depthwise convs have no bias: pass ssm_conv_bias=False.")
    if any(k.startswith("outnorm") for k in missing) or any(k.startswith("classifier.") for k in unexpected):
        hints.append("classifier vs backbone: a classification checkpoint loaded into a features_only backbone "
                     "needs exclude=('outnorm',) and drops classifier.* (use load_torch_checkpoint(..., "
                     "exclude=('outnorm',), ignore_unexpected=('classifier.',))).")
    return hints


def _format_error(model, missing, unexpected, mismatched, guess: str | None) -> str:
    lines = [f"state_dict does not match {type(model).__name__}:"]
    for title, items in (("missing keys (in the model, not in the checkpoint)", missing),
                         ("unexpected keys (in the checkpoint, not in the model)", unexpected)):
        if items:
            shown = ", ".join(items[:12]) + (f", ... ({len(items) - 12} more)" if len(items) > 12 else "")
            lines.append(f"  {title} [{len(items)}]: {shown}")
    if mismatched:
        shown = "; ".join(f"{k}: checkpoint {g} vs model {w}" for k, w, g in mismatched[:8])
        more = f"; ... ({len(mismatched) - 8} more)" if len(mismatched) > 8 else ""
        lines.append(f"  shape mismatches [{len(mismatched)}]: {shown}{more}")
    hints = _diagnose(model, missing, unexpected, mismatched)
    if guess:
        hints.insert(0, f"the checkpoint matches the registered model {guess!r}: "
                        f"vmamba_jax.create_model({guess!r}, num_classes=...)")
    for h in hints:
        lines.append(f"  likely cause: {h}")
    return "\n".join(lines)


@functools.lru_cache(maxsize=None)
def _registered_shapes(name: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    from vmamba_jax.models import create_model
    return tuple(expected_state_dict_shapes(create_model(name)).items())


def guess_model(state_shapes: Mapping[str, tuple], family: type | None = None) -> str | None:
    """The registered model whose expected keys and shapes equal the checkpoint's, head size aside.

    `family` restricts the search to models built by that class (the class the user is loading into): each candidate
    costs an abstract init, and a checkpoint is nearly always a variant of the architecture being loaded.
    """
    from vmamba_jax.models import get_entry, list_models

    def strip(shapes):
        return {k: tuple(v) for k, v in shapes if not k.startswith("classifier.head")}

    ckpt = strip(state_shapes.items())
    for name in list_models():
        if family is not None and get_entry(name).cls is not family:
            continue
        try:
            want = _registered_shapes(name)
        except Exception:  # a model that cannot be built abstractly is just not a candidate
            continue
        if strip(want) == ckpt:
            return name
    return None


# ---------------------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------------------

def load_torch_checkpoint(source, model: nn.Module, *, ema: bool = False, exclude: Iterable[str] = (),
                          ignore_unexpected: Iterable[str] = (), rng: jax.Array | None = None) -> dict:
    """Official checkpoint -> Flax variables {"params": ...} for `model`, strictly.

    Args:
      source: a path (.pth/.pt/.bin, .safetensors, .npz) or a state_dict mapping (numpy arrays or torch tensors). A
        full training checkpoint contributes its 'model' entry ('model_ema' with `ema=True`).
      model: the Flax module the weights are for (e.g. `create_model("vmamba_tiny_s1l8")`).
      exclude: official key prefixes to leave at the model's fresh init (e.g. "classifier.head" for fine-tuning on a
        new label set); those params are initialised with `rng` (default key 0).
      ignore_unexpected: official key prefixes in the checkpoint to drop without error.
    Raises:
      CheckpointMismatchError: listing every missing, unexpected and mis-shaped key, with likely causes.
    """
    if getattr(model, "scan_blocks", False):  # official keys name the blocks one by one: convert, then stack
        from vmamba_jax.models.vmamba import stack_blocks

        variables = load_torch_checkpoint(source, model.clone(scan_blocks=False), ema=ema, exclude=exclude,
                                          ignore_unexpected=ignore_unexpected, rng=rng)
        return {"params": stack_blocks(variables["params"])}
    # Models with other naming schemes (the timm baselines) set their own `torch_legacy_renames` (e.g. none), and
    # list the non-parameter buffers they recompute themselves (e.g. Swin's relative_position_index) in
    # `torch_buffers`: those are dropped, not loaded.
    state = apply_legacy_renames(read_state_dict(source, ema=ema),
                                 getattr(model, "torch_legacy_renames", LEGACY_RENAMES))
    buffers = tuple("." + b for b in getattr(model, "torch_buffers", ()))
    state = {k: v for k, v in state.items() if not k.endswith(buffers)}
    exclude, ignore_unexpected = tuple(exclude), tuple(ignore_unexpected)
    target = flatten_dict(abstract_params(model))
    by_key = {torch_key(p): p for p in target}

    missing = [k for k in by_key if k not in state and not k.startswith(exclude)]
    unexpected = [k for k in state if k not in by_key and not k.startswith(ignore_unexpected + exclude)]
    mismatched = []
    flat = {}
    for key, path in by_key.items():
        if key not in state or key.startswith(exclude):
            continue
        want = tuple(target[path].shape)
        arr = from_torch_array(path, state[key], want)
        if tuple(arr.shape) != want:
            mismatched.append((key, to_torch_array(path, np.empty(want, np.uint8)).shape, tuple(state[key].shape)))
            continue
        flat[path] = jnp.asarray(arr, dtype=target[path].dtype)
    if missing or unexpected or mismatched:
        guess = guess_model({k: v.shape for k, v in state.items()}, family=type(model))
        raise CheckpointMismatchError(_format_error(model, missing, unexpected, mismatched, guess))
    if exclude:
        x = jnp.zeros((1, 64, 64, getattr(model, "in_chans", 3)), jnp.float32)
        # jit: an eager init of a deep model runs op by op (38 s for MSVMamba on CPU against 17 s compiled).
        fresh = flatten_dict(jax.jit(model.init)(rng if rng is not None else jax.random.key(0), x)["params"])
        for path in target:
            if torch_key(path).startswith(exclude):
                flat[path] = fresh[path]
    return {"params": unflatten_dict(flat)}


def to_torch_state_dict(variables, model: nn.Module | None = None) -> dict[str, np.ndarray]:
    """Flax variables -> official state_dict {key: numpy array} (exact inverse of `load_torch_checkpoint`).

    `model` is accepted for symmetry with `load_torch_checkpoint`; the mapping needs only the parameter tree (a
    `scan_blocks` model's stacked blocks are unstacked into the official per-block keys).
    """
    del model
    from vmamba_jax.models.vmamba import unstack_blocks

    params = unstack_blocks(variables.get("params", variables))
    return {torch_key(p): np.ascontiguousarray(to_torch_array(p, np.asarray(v)))
            for p, v in flatten_dict(params).items()}

