"""Mixup / CutMix with label smoothing, as timm `Mixup(mode="batch")`, in JAX inside the jitted train step.

Why on device: it is a whole-batch op (each image is mixed with the batch flipped), cheap on the accelerator, and
its randomness comes from the step's RNG key, so a resumed run reproduces it exactly.

Per batch: with probability `prob` mix; then CutMix with probability `switch_prob` (when both alphas > 0) else Mixup.
lam ~ Beta(alpha, alpha). CutMix pastes a box of area (1 - lam) from the flipped batch and corrects lam to the exact
pasted area (timm `correct_lam=True`). Targets: smoothed one-hot (off = smoothing / classes, on = 1 - smoothing +
off), mixed as lam * y + (1 - lam) * flip(y).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def smooth_one_hot(labels, num_classes: int, smoothing: float = 0.0):
    """labels (B,) int -> (B, num_classes) float32."""
    off = smoothing / num_classes
    return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * (1.0 - smoothing) + off


def mixup_cutmix(rng, images, labels, *, num_classes: int, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
                 prob: float = 1.0, switch_prob: float = 0.5, label_smoothing: float = 0.1):
    """images (B, H, W, C), labels (B,) int -> (mixed images, soft targets (B, num_classes) float32)."""
    y = smooth_one_hot(labels, num_classes, label_smoothing)
    if prob <= 0 or (mixup_alpha <= 0 and cutmix_alpha <= 0):
        return images, y
    k_apply, k_switch, k_lam_m, k_lam_c, k_box_y, k_box_x = jax.random.split(rng, 6)
    apply = jax.random.uniform(k_apply) < prob
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = jax.random.uniform(k_switch) < switch_prob
    else:
        use_cutmix = jnp.asarray(cutmix_alpha > 0)
    lam_mix = jax.random.beta(k_lam_m, mixup_alpha, mixup_alpha) if mixup_alpha > 0 else jnp.float32(1.0)
    lam_cut = jax.random.beta(k_lam_c, cutmix_alpha, cutmix_alpha) if cutmix_alpha > 0 else jnp.float32(1.0)

    _, h, w, _ = images.shape
    # timm rand_bbox: cut ratio sqrt(1 - lam), box centre uniform over the image, clipped at the border.
    cut_rat = jnp.sqrt(1.0 - lam_cut)
    cut_h, cut_w = (h * cut_rat).astype(jnp.int32), (w * cut_rat).astype(jnp.int32)
    cy = jax.random.randint(k_box_y, (), 0, h)
    cx = jax.random.randint(k_box_x, (), 0, w)
    y0, y1 = jnp.clip(cy - cut_h // 2, 0, h), jnp.clip(cy + cut_h // 2, 0, h)
    x0, x1 = jnp.clip(cx - cut_w // 2, 0, w), jnp.clip(cx + cut_w // 2, 0, w)
    rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
    box = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)  # (H, W)
    lam_cut_corrected = 1.0 - ((y1 - y0) * (x1 - x0)).astype(jnp.float32) / (h * w)

    flipped = images[::-1]
    mixed_m = (lam_mix * images.astype(jnp.float32) + (1.0 - lam_mix) * flipped.astype(jnp.float32))
    mixed_c = jnp.where(box[None, :, :, None], flipped, images)
    lam = jnp.where(apply, jnp.where(use_cutmix, lam_cut_corrected, lam_mix), 1.0)
    out = jnp.where(apply, jnp.where(use_cutmix, mixed_c, mixed_m.astype(images.dtype)), images)
    return out, lam * y + (1.0 - lam) * y[::-1]
