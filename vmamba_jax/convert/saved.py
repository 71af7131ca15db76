"""Saved converted weights: an Orbax params checkpoint plus the model's name and overrides."""

from __future__ import annotations

import json
import os

import jax
import orbax.checkpoint as ocp

from vmamba_jax.models import create_model


def save_converted(directory: str, variables: dict, model_name: str, overrides: dict | None = None) -> str:
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(directory, "params"), variables, force=True)
    with open(os.path.join(directory, "model.json"), "w") as f:
        json.dump({"model": model_name, "overrides": overrides or {}}, f, indent=2)
    return directory


def load_converted(directory: str, **extra_overrides):
    """-> (model, variables) from a directory written by `save_converted` (e.g. by the CLI)."""
    directory = os.path.abspath(directory)
    with open(os.path.join(directory, "model.json")) as f:
        meta = json.load(f)
    model = create_model(meta["model"], **{**meta["overrides"], **extra_overrides})
    with ocp.StandardCheckpointer() as ckptr:
        variables = ckptr.restore(os.path.join(directory, "params"))
    return model, jax.tree_util.tree_map(jax.numpy.asarray, variables)
