"""Losses and metrics (separate from the step, scenic-style)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def soft_target_cross_entropy(logits, targets):
    """timm SoftTargetCrossEntropy per example: logits (B, K), targets (B, K) rows summing to 1 -> (B,) fp32."""
    return -jnp.sum(targets * jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), axis=-1)
