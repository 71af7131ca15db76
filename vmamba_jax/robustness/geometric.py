"""Geometric transformations (imgaug semantics; PIL for the resampling, numpy/scipy for the piecewise map).
Each: (uint8 (H, W, 3), rng, **magnitudes) -> uint8 (H, W, 3) (the output keeps the input size, `keep_size=True`).

Out-of-image areas are filled with black (imgaug's default constant mode, cval 0); resampling is bilinear for warps
(imgaug order=1) and bicubic for the crop/pad resize back to the input size (imgaug's `keep_size` resize).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image
from scipy import ndimage

from vmamba_jax.robustness.sampling import uniform


def fliplr(img, rng):
    """imgaug Fliplr(p=1): mirror left-right."""
    del rng
    return np.ascontiguousarray(img[:, ::-1])


def _pil_affine(img: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """Warp with a 3x3 forward matrix (input (x, y, 1) -> output), bilinear, black outside."""
    inv = np.linalg.inv(forward)
    h, w = img.shape[:2]
    out = Image.fromarray(img).transform((w, h), Image.AFFINE, tuple(inv[:2].reshape(-1)), resample=Image.BILINEAR,
                                         fillcolor=(0, 0, 0))
    return np.asarray(out)


def affine(img, rng, scale=(0.8, 1.2), translate_percent=(-0.2, 0.2), rotate=(-25.0, 25.0), shear=(-8.0, 8.0)):
    """imgaug Affine(scale={"x", "y"}, translate_percent={"x", "y"}, rotate, shear) about the image centre: per image
    independent x/y scales and translations (fractions of width/height), a rotation and an x-shear (degrees)."""
    h, w = img.shape[:2]
    sx, sy = uniform(rng, scale), uniform(rng, scale)
    tx, ty = uniform(rng, translate_percent) * w, uniform(rng, translate_percent) * h
    rot, sh = math.radians(uniform(rng, rotate)), math.radians(uniform(rng, shear))
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    to_origin = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]])
    scale_m = np.diag([sx, sy, 1.0])
    shear_m = np.array([[1, -math.tan(sh), 0], [0, 1, 0], [0, 0, 1]])
    rot_m = np.array([[math.cos(rot), -math.sin(rot), 0], [math.sin(rot), math.cos(rot), 0], [0, 0, 1]])
    back = np.array([[1, 0, cx + tx], [0, 1, cy + ty], [0, 0, 1]])
    return _pil_affine(img, back @ rot_m @ shear_m @ scale_m @ to_origin)


def _crop_pad_resize(img: np.ndarray, top: int, right: int, bottom: int, left: int) -> np.ndarray:
    """Positive amounts crop, negative pad with black; the result is resized back (bicubic) to the input size."""
    h, w = img.shape[:2]
    pad = [(max(0, -top), max(0, -bottom)), (max(0, -left), max(0, -right)), (0, 0)]
    x = np.pad(img, pad)
    y0, x0 = max(0, top), max(0, left)
    y1, x1 = x.shape[0] - max(0, bottom), x.shape[1] - max(0, right)
    if y1 - y0 < 1 or x1 - x0 < 1:  # imgaug keeps at least one pixel
        y1, x1 = y0 + 1, x0 + 1
    x = x[y0:y1, x0:x1]
    if x.shape[:2] == (h, w):
        return np.ascontiguousarray(x)
    return np.asarray(Image.fromarray(np.ascontiguousarray(x)).resize((w, h), Image.BICUBIC))


def crop(img, rng, percent=(0.0, 0.1)):
    """imgaug Crop(percent, keep_size=True): each side cropped independently by U(percent) of its dimension, then
    resized back."""
    h, w = img.shape[:2]
    t, r, b, l = (uniform(rng, percent) for _ in range(4))
    return _crop_pad_resize(img, round(t * h), round(r * w), round(b * h), round(l * w))


def crop_and_pad(img, rng, percent=(-0.25, 0.25)):
    """imgaug CropAndPad(percent, pad_mode="constant", pad_cval=0, keep_size=True): each side independently padded
    (negative) or cropped (positive) by U(percent) of its dimension, then resized back."""
    h, w = img.shape[:2]
    t, r, b, l = (uniform(rng, percent) for _ in range(4))
    # imgaug's sign convention: positive percent pads, negative crops
    return _crop_pad_resize(img, -round(t * h), -round(r * w), -round(b * h), -round(l * w))


def piecewise_map(h: int, w: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The piecewise-affine map of a regular (rows, cols) control grid `src` (rows, cols, 2) in (y, x) onto `dst`:
    each grid cell is split along its main diagonal into two triangles, each mapped affinely (barycentric
    coordinates). Returns the source coordinates (2, h, w) of every output pixel."""
    rows, cols = src.shape[:2]
    ys, xs = src[:, 0, 0], src[0, :, 1]
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    r = np.clip(np.searchsorted(ys, yy, side="right") - 1, 0, rows - 2)
    c = np.clip(np.searchsorted(xs, xx, side="right") - 1, 0, cols - 2)
    u = (yy - ys[r]) / (ys[r + 1] - ys[r])
    v = (xx - xs[c]) / (xs[c + 1] - xs[c])
    p00, p10, p01, p11 = dst[r, c], dst[r + 1, c], dst[r, c + 1], dst[r + 1, c + 1]
    lower = (u + v <= 1.0)[..., None]
    uu, vv = u[..., None], v[..., None]
    out = np.where(lower, p00 + uu * (p10 - p00) + vv * (p01 - p00),
                   p11 + (1 - uu) * (p01 - p11) + (1 - vv) * (p10 - p11))
    return np.moveaxis(out, -1, 0)


def piecewise_affine(img, rng, scale=(0.01, 0.05), nb_rows=4, nb_cols=4):
    """imgaug PiecewiseAffine(scale, nb_rows, nb_cols): a regular grid of control points spanning the image, each
    jittered by N(0, s) * (H, W) with s ~ U(scale) per image; every output pixel samples the input at its
    piecewise-affine image (bilinear, black outside)."""
    h, w = img.shape[:2]
    s = uniform(rng, scale)
    gy, gx = np.meshgrid(np.linspace(0, h - 1, nb_rows), np.linspace(0, w - 1, nb_cols), indexing="ij")
    src = np.stack([gy, gx], -1)
    dst = src + rng.normal(0.0, s, src.shape) * np.array([h, w], np.float64)
    coords = piecewise_map(h, w, src, dst)
    x = img.astype(np.float64)
    out = np.stack([ndimage.map_coordinates(x[..., ch], coords, order=1, mode="constant", cval=0.0)
                    for ch in range(x.shape[-1])], -1)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def perspective_coeffs(quad: np.ndarray, w: int, h: int) -> tuple[float, ...]:
    """PIL PERSPECTIVE coefficients mapping the output rectangle's corners (0,0), (w,0), (w,h), (0,h) to `quad`
    (4, 2) in (x, y) order tl, tr, br, bl."""
    rect = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64)
    a = []
    for (x, y), (u, v) in zip(rect, quad):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    return tuple(np.linalg.solve(np.asarray(a), quad.reshape(-1)))


def perspective(img, rng, scale=(0.01, 0.15)):
    """imgaug PerspectiveTransform(scale, keep_size=True): each corner moves inwards by |N(0, s)| of the width and
    height (s ~ U(scale) per image); the quadrilateral they span is warped onto the full output (bilinear)."""
    h, w = img.shape[:2]
    s = uniform(rng, scale)
    d = np.abs(rng.normal(0.0, s, (4, 2))) * np.array([w, h], np.float64)
    quad = np.array([[d[0, 0], d[0, 1]], [w - d[1, 0], d[1, 1]], [w - d[2, 0], h - d[2, 1]], [d[3, 0], h - d[3, 1]]])
    out = Image.fromarray(img).transform((w, h), Image.PERSPECTIVE, perspective_coeffs(quad, w, h),
                                         resample=Image.BILINEAR, fillcolor=(0, 0, 0))
    return np.asarray(out)
