"""Classification metrics as masked sums, so padded examples count zero times and batches add up exactly.

`masked_sums` runs inside the jitted eval step; `finalize` turns the accumulated sums into percentages on the host.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """(B, C) logits, (B,) int labels -> (B,) float32, 1 where the label is among the k highest logits.

    Ties count against the label: an example is correct only if fewer than k classes score strictly higher than the
    label *and* fewer than k score at least as high (so an all-equal row is never "correct"), matching argmax-based
    top-1 on untied rows. k is clipped to the number of classes.
    """
    k = min(k, logits.shape[-1])
    label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
    higher_or_equal = jnp.sum(logits >= label_logit, axis=-1)  # counts the label itself
    return (higher_or_equal <= k).astype(jnp.float32)


def masked_sums(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """Per-batch sums: {"top1", "top5", "loss", "count"} over the examples with mask 1.

    logits (B, C) any float dtype (computed in fp32), labels (B,) int, mask (B,) float {0, 1}.
    """
    logits = logits.astype(jnp.float32)
    mask = mask.astype(jnp.float32)
    loss = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=-1)[:, 0]
    return {
        "top1": jnp.sum(topk_correct(logits, labels, 1) * mask),
        "top5": jnp.sum(topk_correct(logits, labels, 5) * mask),
        "loss": jnp.sum(loss * mask),
        "count": jnp.sum(mask),
    }


def finalize(sums: dict) -> dict[str, float]:
    """Accumulated sums -> {"top1": %, "top5": %, "loss": mean, "count": n}."""
    n = float(sums["count"])
    if n <= 0:
        raise ValueError("no examples were evaluated (count 0)")
    return {"top1": 100.0 * float(sums["top1"]) / n, "top5": 100.0 * float(sums["top5"]) / n,
            "loss": float(sums["loss"]) / n, "count": int(round(n))}


def add_sums(acc: dict | None, sums: dict) -> dict:
    """Host-side accumulation in float64 (fp32 sums over 50k examples would lose the last digits)."""
    sums = {k: np.float64(np.asarray(v)) for k, v in sums.items()}
    if acc is None:
        return sums
    return {k: acc[k] + sums[k] for k in acc}
