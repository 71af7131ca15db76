"""Pixel-value transformations (imgaug semantics, numpy only). Each: (uint8 (H, W, 3), rng, **magnitudes) -> uint8.

Ranges (lo, hi) are sampled uniformly once per image from `rng`; results are rounded half to even and saturated.
"""

from __future__ import annotations

import numpy as np

from vmamba_jax.robustness.color import LUMA, hls_to_rgb, hsv_to_rgb, rgb_to_hls, rgb_to_hsv, to_uint8
from vmamba_jax.robustness.sampling import uniform



def additive_gaussian_noise(img, rng, scale=(0.0, 0.2 * 255)):
    """imgaug AdditiveGaussianNoise(scale): sigma ~ U(scale) per image, one N(0, sigma) draw per pixel shared by the
    three channels (per_channel=False)."""
    sigma = uniform(rng, scale)
    noise = rng.normal(0.0, sigma, img.shape[:2] + (1,))
    return to_uint8(img.astype(np.float64) + noise)


def add_to_hue_and_saturation(img, rng, value=(-50, 50)):
    """imgaug AddToHueAndSaturation(value, per_channel=True): independent hue and saturation offsets ~ U(value) on
    imgaug's [-255, 255] scale; the hue offset wraps (255 = one full turn), saturation saturates at [0, 255]."""
    dh, ds = uniform(rng, value), uniform(rng, value)
    hsv = rgb_to_hsv(img.astype(np.float64) / 255.0)
    hsv[..., 0] = (hsv[..., 0] + dh / 255.0) % 1.0
    hsv[..., 1] = np.clip(hsv[..., 1] + ds / 255.0, 0.0, 1.0)
    return to_uint8(hsv_to_rgb(hsv) * 255.0)


def grayscale(img, rng, alpha=1.0):
    """imgaug Grayscale(alpha): BT.601 luma (OpenCV RGB2GRAY), blended with the image by alpha (1 = fully gray)."""
    a = uniform(rng, alpha)
    x = img.astype(np.float64)
    gray = np.rint(x @ LUMA)[..., None]
    return to_uint8((1.0 - a) * x + a * gray)


def invert(img, rng):
    """imgaug Invert(p=1): 255 - x."""
    del rng
    return (255 - img).astype(np.uint8)


def linear_contrast(img, rng, alpha=(0.4, 1.6)):
    """imgaug LinearContrast(alpha): 127.5 + alpha (x - 127.5), clipped, then truncated as imgaug's uint8 table."""
    a = uniform(rng, alpha)
    table = np.clip(127.5 + a * (np.arange(256, dtype=np.float64) - 127.5), 0, 255).astype(np.uint8)
    return table[img]


def multiply(img, rng, mul=(0.5, 1.5), per_channel=False):
    """imgaug Multiply(mul[, per_channel]): x * m, one m per image (or one per channel)."""
    m = rng.uniform(*mul, size=3) if per_channel else uniform(rng, mul)
    return to_uint8(img.astype(np.float64) * m)


def fast_snowy_landscape(img, rng, lightness_threshold=140, lightness_multiplier=2.5):
    """imgaug FastSnowyLandscape: in HLS, lightness L (0..255) below the threshold is multiplied, then saturated."""
    thr, mul = uniform(rng, lightness_threshold), uniform(rng, lightness_multiplier)
    hls = rgb_to_hls(img.astype(np.float64) / 255.0)
    l255 = hls[..., 1] * 255.0
    hls[..., 1] = np.clip(np.where(l255 < thr, l255 * mul, l255), 0, 255) / 255.0
    return to_uint8(hls_to_rgb(hls) * 255.0)
