"""Resizing a batch to the model's input size on the device, inside the jitted steps.

Why: for small images the host pipeline is the bottleneck, not the step. CIFAR-10 at 64 px (32x32 upsampled so the
stem's first conv sees full resolution) trained at ~10k img/s on the H200 with either kernel plan: twelve Grain
workers resizing, augmenting and shipping 64x64 float images stream 6.8k img/s on its host, 9.6k when they augment at
32x32 and this module upsamples, 18.2k with the train set decoded once as well
(benchmarks/results/pipeline_cifar10_h200.md). Augmenting at the source's
32x32 (config.data.augment_size) and upsampling here costs the CPU a quarter of the pixels (0.30 instead of 0.50 ms
per image for crop, flip, RandAugment and erasing on one core) and the GPU almost nothing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def resize_to(images: jax.Array, size: int) -> jax.Array:
    """images (B, H, W, C) -> (B, size, size, C), bicubic (Keys a = -0.5, as PIL's), in the input's dtype; the
    identity when the batch already has that size."""
    b, h, w, c = images.shape
    if (h, w) == (size, size):
        return images
    return jax.image.resize(images, (b, size, size, c), method="bicubic", antialias=h > size or w > size)
