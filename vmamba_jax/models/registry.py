"""Model registry: `create_model(name, **overrides)` and `list_models()`, timm-style.

A registered factory returns the official constructor's keyword arguments for a released variant; overrides use the
same keyword names (depths, dims, num_classes, ssm_ratio, forward_type, drop_path_rate, ...) plus the JAX-side knobs
(dtype, scan_implementation). `features_only=True` builds the model's backbone class instead (e.g. VSSMBackbone).
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Callable

import flax.linen as nn


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    name: str
    cls: type[nn.Module]
    kwargs_fn: Callable[[], dict[str, Any]]
    backbone_cls: type[nn.Module] | None = None
    params: int | None = None       # official parameter count (with the 1000-way head)
    top1: float | None = None       # official ImageNet-1k top-1
    doc: str = ""


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, cls: type[nn.Module], *, backbone_cls: type[nn.Module] | None = None,
                   params: int | None = None, top1: float | None = None):
    def decorator(fn: Callable[[], dict[str, Any]]):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelEntry(name, cls, fn, backbone_cls, params, top1, (fn.__doc__ or "").strip())
        return fn
    return decorator


def list_models() -> list[str]:
    """Names of every registered model, in registration order."""
    return list(_REGISTRY)


def get_entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Registered: {list_models()}")
    return _REGISTRY[name]


def _hashable(v):
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    return v


def model_kwargs(name: str, **overrides) -> dict[str, Any]:
    """The constructor kwargs `create_model(name, **overrides)` would use."""
    entry = get_entry(name)
    features_only = overrides.pop("features_only", False)
    cls = entry.backbone_cls if features_only else entry.cls
    if cls is None:
        raise ValueError(f"model {name!r} has no features_only (backbone) variant")
    fields = {f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("parent", "name")}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        hints = {k: difflib.get_close_matches(k, fields, n=1) for k in unknown}
        hints = ", ".join(f"{k!r}" + (f" (did you mean {v[0]!r}?)" if v else "") for k, v in hints.items())
        raise TypeError(f"create_model({name!r}): unknown keyword(s) {hints}; accepted: {sorted(fields)}")
    kwargs = dict(entry.kwargs_fn())
    kwargs.update(overrides)
    return {k: _hashable(v) for k, v in kwargs.items()}


def create_model(name: str, **overrides) -> nn.Module:
    """Builds a registered model. `overrides` take the official constructor's keyword names; `features_only=True`
    returns the backbone (multi-scale features) variant."""
    features_only = overrides.get("features_only", False)
    kwargs = model_kwargs(name, **overrides)
    entry = get_entry(name)
    cls = entry.backbone_cls if features_only else entry.cls
    return cls(**kwargs)
