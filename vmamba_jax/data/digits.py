"""The embedded default dataset: scikit-learn's 8x8 handwritten digits (1,797 real scans, ships with scikit-learn,
no download), upscaled to (size, size, 3) uint8 with bicubic interpolation.

Split: stratified 80/20 with a fixed seed (1,437 train / 360 test).
"""

from __future__ import annotations

import functools

import numpy as np

from vmamba_jax.data.sources import ArraySource


@functools.lru_cache(maxsize=4)
def _digits(size: int):
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    imgs = (d.images * (255.0 / 16.0)).astype(np.uint8)  # values 0..16
    up = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)) for im in imgs])
    up = np.repeat(up[..., None], 3, axis=-1)
    idx = np.arange(len(up))
    tr, te = train_test_split(idx, test_size=0.2, random_state=0, stratify=d.target)
    return up, d.target.astype(np.int32), np.sort(tr), np.sort(te)


def digits_source(split: str, size: int = 32) -> ArraySource:
    """split: "train" or "test"."""
    images, labels, tr, te = _digits(size)
    idx = {"train": tr, "test": te}[split]
    return ArraySource(images[idx], labels[idx], [str(i) for i in range(10)])
