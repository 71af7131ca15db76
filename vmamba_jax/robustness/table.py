"""The robustness study's 20 image transformations and their magnitudes: the one table to read or change.

Each transformation is applied to the 224x224 uint8 image *after* the official eval resize/center-crop and *before*
normalisation, and is a deterministic function of (image, seed, transformation, image index): its random draws come
from `np.random.default_rng([seed, TRANSFORM_IDS[name], index])`, so results do not depend on batch size, order,
threads or which models are evaluated.

Reference semantics are the imgaug augmenters of the same names (imgaug is unmaintained; these are numpy/PIL/scipy
re-implementations). Magnitudes are those of imgaug's documentation examples for each augmenter, with p = 1 (every
image is transformed); a range (lo, hi) is drawn uniformly once per image.

| name | imgaug reference | magnitude |
|---|---|---|
| Additive Gaussian Noise | AdditiveGaussianNoise | scale (std) ~ U(0, 0.2*255), per pixel, shared by channels |
| Affine | Affine | scale x, y ~ U(0.8, 1.2); translate x, y ~ U(-20%, 20%); rotate ~ U(-25, 25) deg; shear ~ U(-8, 8) deg |
| Crop | Crop (keep_size) | each side cropped by U(0, 10%), resized back |
| Hue and Saturation | AddToHueAndSaturation (per_channel) | hue and saturation offsets ~ U(-50, 50) each (of 255) |
| Crop and Pad | CropAndPad (keep_size) | each side U(-25%, 25%) (pad > 0 black, crop < 0), resized back |
| Cutout | Cutout (squared=False) | 1-5 boxes of 20% x 20% of the image, gray (128) |
| Dropout | Dropout | pixels zeroed with p ~ U(0, 0.2) |
| Edge Detect | EdgeDetect | alpha ~ U(0, 1) blend of identity and the 3x3 Laplacian |
| Emboss | Emboss | alpha ~ U(0, 1), strength ~ U(0.5, 1.5) |
| Piecewise Affine | PiecewiseAffine | 4x4 control grid jittered by N(0, s), s ~ U(0.01, 0.05) of H, W |
| Salt | Salt | 10% of pixels set to bright values in [128, 255] |
| Fast Snowy Landscape | FastSnowyLandscape | HLS lightness < 140 multiplied by 2.5 |
| Fliplr | Fliplr | always flipped |
| Gaussian Blur | GaussianBlur | sigma ~ U(0, 3) |
| Grayscale | Grayscale | alpha = 1 (fully gray, BT.601 luma) |
| Inversion | Invert | always inverted (255 - x) |
| Linear Contrast | LinearContrast | alpha ~ U(0.4, 1.6) around 127.5 |
| Multiply | Multiply | x * m, m ~ U(0.5, 1.5) per image |
| Multiply 0 | Multiply (per_channel) | x * m_c, m_c ~ U(0.5, 1.5) per channel (our reading of the study's name) |
| Perspective | PerspectiveTransform (keep_size) | corners moved in by abs(N(0, s)), s ~ U(0.01, 0.15) |

"Clean" (no transformation) is the baseline every drop is measured against.
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np

from vmamba_jax.robustness import filters, geometric, occlusion, photometric

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]

CLEAN = "Clean"


def _clean(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    del rng
    return img


# name -> function with its magnitudes bound. Order = the study's list; the index is part of every seed.
TRANSFORMS: dict[str, Transform] = {
    CLEAN: _clean,
    "Additive Gaussian Noise": functools.partial(photometric.additive_gaussian_noise, scale=(0.0, 0.2 * 255)),
    "Affine": functools.partial(geometric.affine, scale=(0.8, 1.2), translate_percent=(-0.2, 0.2),
                                rotate=(-25.0, 25.0), shear=(-8.0, 8.0)),
    "Crop": functools.partial(geometric.crop, percent=(0.0, 0.1)),
    "Hue and Saturation": functools.partial(photometric.add_to_hue_and_saturation, value=(-50, 50)),
    "Crop and Pad": functools.partial(geometric.crop_and_pad, percent=(-0.25, 0.25)),
    "Cutout": functools.partial(occlusion.cutout, nb_iterations=(1, 5), size=0.2, cval=128),
    "Dropout": functools.partial(occlusion.dropout, p=(0.0, 0.2)),
    "Edge Detect": functools.partial(filters.edge_detect, alpha=(0.0, 1.0)),
    "Emboss": functools.partial(filters.emboss, alpha=(0.0, 1.0), strength=(0.5, 1.5)),
    "Piecewise Affine": functools.partial(geometric.piecewise_affine, scale=(0.01, 0.05), nb_rows=4, nb_cols=4),
    "Salt": functools.partial(occlusion.salt, p=0.1),
    "Fast Snowy Landscape": functools.partial(photometric.fast_snowy_landscape, lightness_threshold=140,
                                              lightness_multiplier=2.5),
    "Fliplr": geometric.fliplr,
    "Gaussian Blur": functools.partial(filters.gaussian_blur, sigma=(0.0, 3.0)),
    "Grayscale": functools.partial(photometric.grayscale, alpha=1.0),
    "Inversion": photometric.invert,
    "Linear Contrast": functools.partial(photometric.linear_contrast, alpha=(0.4, 1.6)),
    "Multiply": functools.partial(photometric.multiply, mul=(0.5, 1.5)),
    "Multiply 0": functools.partial(photometric.multiply, mul=(0.5, 1.5), per_channel=True),
    "Perspective": functools.partial(geometric.perspective, scale=(0.01, 0.15)),
}
TRANSFORM_IDS = {name: i for i, name in enumerate(TRANSFORMS)}


def rng_for(seed: int, name: str, index: int) -> np.random.Generator:
    """The generator of transformation `name` on image `index`: independent of everything else in the run."""
    return np.random.default_rng([seed, TRANSFORM_IDS[name], index])


def apply(name: str, img: np.ndarray, seed: int, index: int) -> np.ndarray:
    """One transformation of one uint8 (H, W, 3) image -> uint8 (H, W, 3), deterministic in (seed, name, index)."""
    if name not in TRANSFORMS:
        raise ValueError(f"unknown transformation {name!r}; choose from {list(TRANSFORMS)}")
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {img.dtype} {img.shape}")
    out = TRANSFORMS[name](img, rng_for(seed, name, index))
    assert out.shape == img.shape and out.dtype == np.uint8, (name, out.shape, out.dtype)
    return out


def select(names: str | None) -> list[str]:
    """A comma-separated subset ("all" / None = every transformation); Clean is always included, first."""
    if not names or names == "all":
        return list(TRANSFORMS)
    picked = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in picked if n not in TRANSFORMS]
    if unknown:
        raise ValueError(f"unknown transformation(s) {unknown}; choose from {list(TRANSFORMS)}")
    return [CLEAN] + [n for n in picked if n != CLEAN]
