"""Per-image transforms, run inside Grain workers: the official train augmentation and the eval resize/center-crop.

Train (timm `create_transform(is_training=True)` as VMamba configures it): RandomResizedCrop (bicubic, scale
(0.08, 1), ratio (3/4, 4/3)) or, for small images, a padded random crop; horizontal flip; RandAugment; normalise;
RandomErasing (pixel mode, one box). Eval: resize the shorter side to size/crop_pct (bicubic), center crop, normalise.
Images leave as float32 (H, W, 3), normalised with the dataset mean/std.
"""

from __future__ import annotations

import dataclasses
import math

import grain
import numpy as np
from PIL import Image

from vmamba_jax.data.randaugment import parse_rand_augment, rand_augment

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def random_resized_crop_box(rng: np.random.Generator, height: int, width: int, scale, ratio):
    """torchvision `RandomResizedCrop.get_params`: (top, left, h, w)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height  # fallback: whole-image center crop clamped to the ratio range
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_erasing(img: np.ndarray, rng: np.random.Generator, area=(0.02, 1 / 3), log_aspect=(math.log(0.3),
                   math.log(1 / 0.3))) -> np.ndarray:
    """timm RandomErasing(mode="pixel", max_count=1) on a normalised image: one box of N(0, 1) noise."""
    h_img, w_img, c = img.shape
    for _ in range(10):
        target = rng.uniform(*area) * h_img * w_img
        aspect = math.exp(rng.uniform(*log_aspect))
        h = int(round(math.sqrt(target * aspect)))
        w = int(round(math.sqrt(target / aspect)))
        if w < w_img and h < h_img:
            top, left = int(rng.integers(0, h_img - h + 1)), int(rng.integers(0, w_img - w + 1))
            img = img.copy()
            img[top:top + h, left:left + w] = rng.standard_normal((h, w, c), dtype=np.float32)
            return img
    return img


def _normalise(img: np.ndarray, mean, std) -> np.ndarray:
    return ((img.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32))


@dataclasses.dataclass(frozen=True)
class TrainTransform(grain.transforms.RandomMap):
    """Official train augmentation; knobs off (0 / "" / None) drop a stage.

    size: output side. rrc_scale: RandomResizedCrop scale range, or None for a padded random crop with `crop_padding`
    (zero fill, the CIFAR habit). hflip: flip probability. randaugment: timm spec string or "". reprob: random
    erasing probability.
    """

    size: int = 224
    rrc_scale: tuple | None = (0.08, 1.0)
    rrc_ratio: tuple = (3 / 4, 4 / 3)
    crop_padding: int = 0
    hflip: float = 0.5
    randaugment: str = "rand-m9-mstd0.5-inc1"
    reprob: float = 0.25
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        img = element["image"]
        if self.rrc_scale is not None:
            top, left, h, w = random_resized_crop_box(rng, img.shape[0], img.shape[1], self.rrc_scale, self.rrc_ratio)
            pil = Image.fromarray(img[top:top + h, left:left + w]).resize((self.size, self.size), Image.BICUBIC)
        else:
            if img.shape[:2] != (self.size, self.size):
                img = np.asarray(Image.fromarray(img).resize((self.size, self.size), Image.BICUBIC))
            if self.crop_padding:
                p = self.crop_padding
                padded = np.pad(img, ((p, p), (p, p), (0, 0)))
                top, left = rng.integers(0, 2 * p + 1, size=2)
                img = padded[top:top + self.size, left:left + self.size]
            pil = None
        if self.hflip and rng.random() < self.hflip:
            img = np.asarray(pil)[:, ::-1] if pil is not None else img[:, ::-1]
            pil = None
        if self.randaugment:
            pil = pil if pil is not None else Image.fromarray(np.ascontiguousarray(img))
            fill = tuple(min(255, round(255 * m)) for m in self.mean)
            pil = rand_augment(pil, rng, fill=fill, **parse_rand_augment(self.randaugment))
        img = np.asarray(pil) if pil is not None else img
        out = _normalise(img, self.mean, self.std)
        if self.reprob and rng.random() < self.reprob:
            out = random_erasing(out, rng)
        return {**element, "image": np.ascontiguousarray(out)}


def eval_resize_crop(img: np.ndarray, size: int, crop_pct: float) -> np.ndarray:
    """Resize the shorter side to int(size / crop_pct) (bicubic), then center crop (size, size)."""
    h, w = img.shape[:2]
    short = int(math.floor(size / crop_pct))
    if (h, w) != (short, short) or short != size:
        if h <= w:
            nh, nw = short, int(round(short * w / h))
        else:
            nw, nh = short, int(round(short * h / w))
        if (nh, nw) != (h, w):
            img = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BICUBIC))
        h, w = nh, nw
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return img[top:top + size, left:left + size]


@dataclasses.dataclass(frozen=True)
class EvalTransform(grain.transforms.Map):
    """Resize 256 -> center crop 224 at the defaults (crop_pct = 224/256)."""

    size: int = 224
    crop_pct: float = 0.875
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD

    def map(self, element: dict) -> dict:
        img = eval_resize_crop(element["image"], self.size, self.crop_pct)
        return {**element, "image": np.ascontiguousarray(_normalise(img, self.mean, self.std))}
