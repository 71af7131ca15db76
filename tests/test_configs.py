"""Every config in configs/ (and every variant of the multi-model ones) loads, says how to run it, and builds.

Building goes as far as train.py does before touching data: the model from `cfg.model` (abstract init at the
config's image size, no compute) and the augmentation from `cfg.aug`, so a renamed model kwarg or aug option breaks
here rather than minutes into a GPU run.
"""

from __future__ import annotations

import glob
import importlib.util
import os

import jax
import jax.numpy as jnp
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))


def _load(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_configs_folder_holds_the_issues_configs():
    names = {os.path.basename(p)[:-3] for p in CONFIG_FILES}
    assert {"digits", "cifar10", "imagenet", "msvmamba_imagenet", "resvmamba_cnfood241"} <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: os.path.basename(p))
def test_config_loads_documents_its_command_and_builds(path):
    from vmamba_jax.models import list_models
    from vmamba_jax.train.loop import build_model, build_transforms

    mod = _load(path)
    doc = mod.__doc__ or ""
    assert "python " in doc and ("Measured" in doc or "Expected" in doc or "expected" in doc), (
        f"{os.path.basename(path)}: the docstring gives the command and the expected (or measured) result")
    variants = list(getattr(mod, "VARIANTS", {None: None}))
    for variant in variants:
        cfg = mod.get_config() if variant is None else mod.get_config(variant)
        assert cfg.model.name in list_models(), cfg.model.name
        build_transforms(cfg)
        model = build_model(cfg, num_classes=cfg.model.get("num_classes") or 10)
        size = cfg.data.image_size
        variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))
        assert jax.tree_util.tree_leaves(variables)
