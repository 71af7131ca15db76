"""Occlusions (imgaug semantics). Each: (uint8 (H, W, 3), rng, **magnitudes) -> uint8."""

from __future__ import annotations

import numpy as np

from vmamba_jax.robustness.sampling import uniform



def cutout(img, rng, nb_iterations=(1, 5), size=0.2, cval=128):
    """imgaug Cutout(nb_iterations, size, squared=False, fill_mode="constant", cval): n ~ U{lo..hi} boxes of
    size*H x size*W, centres uniform over the image, clipped at the border, filled with cval."""
    h, w = img.shape[:2]
    out = img.copy()
    n = int(rng.integers(nb_iterations[0], nb_iterations[1] + 1)) if isinstance(nb_iterations, (tuple, list)) \
        else int(nb_iterations)
    bh, bw = max(1, int(round(uniform(rng, size) * h))), max(1, int(round(uniform(rng, size) * w)))
    for _ in range(n):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        y0, x0 = int(round(cy - bh / 2)), int(round(cx - bw / 2))
        out[max(0, y0):max(0, y0 + bh), max(0, x0):max(0, x0 + bw)] = cval
    return out


def dropout(img, rng, p=(0.0, 0.2)):
    """imgaug Dropout(p, per_channel=False): each pixel (all channels) set to 0 with probability p ~ U(p)."""
    keep = rng.random(img.shape[:2]) >= uniform(rng, p)
    return (img * keep[..., None]).astype(np.uint8)


def salt(img, rng, p=0.1):
    """imgaug Salt(p): each pixel replaced with probability p by a bright value in [128, 255] (imgaug's
    Beta(0.5, 0.5) shifted to the upper half), the same value in the three channels."""
    hit = rng.random(img.shape[:2]) < uniform(rng, p)
    b = rng.beta(0.5, 0.5, img.shape[:2])
    value = np.rint(255.0 * (0.5 + np.abs(b - 0.5))).astype(np.uint8)
    return np.where(hit[..., None], value[..., None], img).astype(np.uint8)
