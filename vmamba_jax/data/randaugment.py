"""RandAugment as timm's `rand_augment_transform("rand-m{M}-mstd{S}-inc1")` (the official VMamba recipe: m9, mstd0.5).

Each image gets `num_layers` ops drawn uniformly with replacement from timm's `_RAND_INCREASING_TRANSFORMS`; each op
fires with probability 0.5 at magnitude ~ N(M, S) clipped to [0, 10] (level denominator 10). Affine ops fill with the
dataset mean and resample bicubically (create_transform passes the train interpolation). Randomness comes from the
numpy Generator that Grain hands to `random_map`, so a seed fixes every augmentation.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

_LEVEL_DENOM = 10.0
_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd",
        "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY",
        "TranslateXRel", "TranslateYRel")


def parse_rand_augment(spec: str) -> dict:
    """"rand-m9-mstd0.5-inc1" -> dict(magnitude=9, magnitude_std=0.5, num_layers=2, increasing=True)."""
    parts = spec.split("-")
    if parts[0] != "rand":
        raise ValueError(f"RandAugment spec must start with 'rand': {spec!r}")
    out = dict(magnitude=10.0, magnitude_std=0.0, num_layers=2, increasing=False)
    for p in parts[1:]:
        if p.startswith("mstd"):
            out["magnitude_std"] = float(p[4:])
        elif p.startswith("m"):
            out["magnitude"] = float(p[1:])
        elif p.startswith("n"):
            out["num_layers"] = int(p[1:])
        elif p.startswith("inc"):
            out["increasing"] = bool(int(p[3:]))
        else:
            raise ValueError(f"unknown RandAugment option {p!r} in {spec!r}")
    if not out["increasing"]:
        raise ValueError("only the increasing op set (inc1, used by VMamba) is implemented")
    return out


def _sign(rng, v):
    return -v if rng.random() < 0.5 else v


def _affine(img, matrix, fill):
    return img.transform(img.size, Image.AFFINE, matrix, resample=Image.BICUBIC, fillcolor=fill)


def apply_op(img: Image.Image, name: str, level: float, rng: np.random.Generator, fill) -> Image.Image:
    f = level / _LEVEL_DENOM
    if name == "AutoContrast":
        return ImageOps.autocontrast(img)
    if name == "Equalize":
        return ImageOps.equalize(img)
    if name == "Invert":
        return ImageOps.invert(img)
    if name == "Rotate":
        return img.rotate(_sign(rng, f * 30.0), resample=Image.BICUBIC, fillcolor=fill)
    if name == "PosterizeIncreasing":
        bits = 4 - int(f * 4)
        if bits <= 0:  # PIL rejects 0 bits; keeping no bits gives a black image, as the bit mask would
            return Image.new(img.mode, img.size)
        return ImageOps.posterize(img, bits)
    if name == "SolarizeIncreasing":
        return ImageOps.solarize(img, 256 - int(f * 256))
    if name == "SolarizeAdd":
        add = int(f * 110)
        a = np.asarray(img).astype(np.int32)
        return Image.fromarray(np.where(a < 128, np.minimum(a + add, 255), a).astype(np.uint8))
    if name in ("ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing"):
        factor = 1.0 + _sign(rng, f * 0.9)
        enh = {"Color": ImageEnhance.Color, "Contrast": ImageEnhance.Contrast, "Brightness": ImageEnhance.Brightness,
               "Sharpness": ImageEnhance.Sharpness}[name[:-len("Increasing")]]
        return enh(img).enhance(factor)
    if name == "ShearX":
        return _affine(img, (1, _sign(rng, f * 0.3), 0, 0, 1, 0), fill)
    if name == "ShearY":
        return _affine(img, (1, 0, 0, _sign(rng, f * 0.3), 1, 0), fill)
    if name == "TranslateXRel":
        return _affine(img, (1, 0, _sign(rng, f * 0.45) * img.size[0], 0, 1, 0), fill)
    if name == "TranslateYRel":
        return _affine(img, (1, 0, 0, 0, 1, _sign(rng, f * 0.45) * img.size[1]), fill)
    raise ValueError(name)


def rand_augment(img: Image.Image, rng: np.random.Generator, *, magnitude: float, magnitude_std: float,
                 num_layers: int, fill=(124, 116, 104), prob: float = 0.5, **_) -> Image.Image:
    for name in rng.choice(_OPS, num_layers, replace=True):
        if rng.random() > prob:
            continue
        m = magnitude if magnitude_std <= 0 else rng.normal(magnitude, magnitude_std)
        img = apply_op(img, str(name), float(np.clip(m, 0.0, _LEVEL_DENOM)), rng, fill)
    return img
