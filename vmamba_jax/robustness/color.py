"""Colour-space helpers on float arrays (numpy only, so the suite runs wherever numpy does).

All take and return float64 arrays in [0, 1] with channels last; hue is in [0, 1) (a full turn), as `colorsys`.
"""

from __future__ import annotations

import numpy as np

# ITU-R BT.601 luma, the weights of OpenCV's RGB2GRAY (imgaug's Grayscale).
LUMA = np.array([0.299, 0.587, 0.114])


def _hue(rgb: np.ndarray, mx: np.ndarray, delta: np.ndarray) -> np.ndarray:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    safe = np.where(delta > 0, delta, 1.0)
    h = np.where(mx == r, ((g - b) / safe) % 6.0, np.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    return np.where(delta > 0, h / 6.0, 0.0) % 1.0


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    mx, mn = rgb.max(-1), rgb.min(-1)
    delta = mx - mn
    s = np.where(mx > 0, delta / np.where(mx > 0, mx, 1.0), 0.0)
    return np.stack([_hue(rgb, mx, delta), s, mx], -1)


def _from_hue(h: np.ndarray, c: np.ndarray, m: np.ndarray) -> np.ndarray:
    """RGB from hue, chroma and the offset m (shared by HSV and HLS)."""
    hp = (h % 1.0) * 6.0
    x = c * (1.0 - np.abs(hp % 2.0 - 1.0))
    z = np.zeros_like(c)
    sector = np.floor(hp).astype(int) % 6
    choices = [np.stack(v, -1) for v in ((c, x, z), (x, c, z), (z, c, x), (z, x, c), (x, z, c), (c, z, x))]
    out = np.choose(sector[..., None], choices)
    return out + m[..., None]


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    c = v * s
    return _from_hue(h, c, v - c)


def rgb_to_hls(rgb: np.ndarray) -> np.ndarray:
    mx, mn = rgb.max(-1), rgb.min(-1)
    delta = mx - mn
    l = (mx + mn) / 2.0
    denom = np.where(l <= 0.5, mx + mn, 2.0 - mx - mn)
    s = np.where(delta > 0, delta / np.where(denom > 0, denom, 1.0), 0.0)
    return np.stack([_hue(rgb, mx, delta), l, s], -1)


def hls_to_rgb(hls: np.ndarray) -> np.ndarray:
    h, l, s = hls[..., 0], hls[..., 1], hls[..., 2]
    c = (1.0 - np.abs(2.0 * l - 1.0)) * s
    return _from_hue(h, c, l - c / 2.0)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Round half to even and saturate to [0, 255] (OpenCV's saturate_cast for uint8 outputs)."""
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)
