"""Losses and metrics (separate from the step, scenic-style)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def soft_target_cross_entropy(logits, targets):
    """timm SoftTargetCrossEntropy per example: logits (B, K), targets (B, K) rows summing to 1 -> (B,) fp32."""
    return -jnp.sum(targets * jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), axis=-1)


def topk_correct(logits, labels, k: int):
    """(B,) float32: 1.0 where the label is among the k highest logits."""
    k = min(k, logits.shape[-1])
    _, idx = jax.lax.top_k(logits, k)
    return jnp.any(idx == labels[:, None], axis=-1).astype(jnp.float32)
