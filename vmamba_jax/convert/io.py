"""Reading checkpoint files into a flat {key: numpy array} state_dict.

Supported: official `torch.save` files (.pth/.pt/.bin; a dict holding 'model', 'model_ema', 'state_dict' or a bare
state_dict), `.safetensors` and `.npz`. torch is needed only for the torch files. The official files pickle a yacs
`CfgNode` config next to the weights; we unpickle with a loader that replaces classes it cannot import by an inert
placeholder, so yacs need not be installed.
"""

from __future__ import annotations

import os
import pickle
import types
from typing import Any, Mapping

import numpy as np

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")


class _Placeholder:
    """Stands in for any class the checkpoint pickles that is not importable here (e.g. yacs.config.CfgNode)."""

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):  # dict subclasses such as CfgNode are rebuilt item by item
        self.__dict__.setdefault("items", {})[key] = value


class _TolerantUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(name, (_Placeholder,), {"__module__": module})


# torch.load(pickle_module=...) wants a module-like object with Unpickler, load and __name__.
_tolerant_pickle = types.SimpleNamespace(Unpickler=_TolerantUnpickler, load=pickle.load, __name__="pickle")


def _to_numpy(v) -> np.ndarray:
    if isinstance(v, np.ndarray):
        return v
    if hasattr(v, "detach"):  # torch.Tensor
        t = v.detach().cpu()
        if t.dtype.is_floating_point and t.dtype != t.new_empty(()).float().dtype:
            t = t.float()  # bf16/fp16 -> fp32 (numpy has no bf16)
        return t.numpy()
    return np.asarray(v)


def pick_state_dict(obj: Mapping[str, Any], ema: bool = False) -> Mapping[str, Any]:
    """From a full training checkpoint take 'model' (or 'model_ema' when `ema`); a bare state_dict passes through."""
    if ema:
        if "model_ema" not in obj:
            raise KeyError(f"ema=True but the checkpoint has no 'model_ema' entry (it has {sorted(obj)[:10]})")
        return obj["model_ema"]
    for key in ("model", "state_dict"):
        if key in obj and isinstance(obj[key], Mapping):
            return obj[key]
    return obj


def read_state_dict(source, ema: bool = False) -> dict[str, np.ndarray]:
    """A path (.pth/.pt/.bin, .safetensors, .npz) or an in-memory mapping -> {key: np.ndarray}."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise FileNotFoundError(f"checkpoint not found: {path}")
        if path.endswith(".safetensors"):
            from safetensors.numpy import load_file
            obj = load_file(path)
        elif path.endswith(".npz"):
            with np.load(path) as z:
                obj = {k: z[k] for k in z.files}
        elif path.endswith(TORCH_SUFFIXES):
            try:
                import torch
            except ImportError as e:
                raise ImportError(f"reading {path} needs PyTorch (pip install torch, CPU build is enough); or "
                                  "convert it to .safetensors/.npz elsewhere") from e
            obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_tolerant_pickle)
        else:
            raise ValueError(f"unknown checkpoint format {path!r}: use .pth/.pt/.bin, .safetensors or .npz")
    else:
        obj = source
    if not isinstance(obj, Mapping):
        raise TypeError(f"expected a state_dict mapping, got {type(obj).__name__}")
    state = pick_state_dict(obj, ema)
    return {k: _to_numpy(v) for k, v in state.items() if not k.endswith("num_batches_tracked")}
