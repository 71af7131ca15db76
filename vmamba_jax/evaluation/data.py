"""Eval data from a one-string spec, on top of the data package's sources (`vmamba_jax.data`):

    imagefolder:/path/to/val    (or just /path/to/val)      ImageNet layout root/<class>/<image>
    arrayrecord:/dir:val                                    shards written by `python -m vmamba_jax.data.prepare`
    tfds:imagenet2012:validation                            needs tensorflow-datasets (ArrayRecord-prepared)
    digits:test                                             the embedded scikit-learn digits (no download)
"""

from __future__ import annotations

import os

import numpy as np


def make_source(spec: str, image_size: int = 224):
    from vmamba_jax.data import ArrayRecordSource, ImageFolderSource, TfdsSource, digits_source

    kind, _, rest = spec.partition(":")
    if kind == "imagefolder":
        return ImageFolderSource(rest)
    if kind == "arrayrecord":
        directory, _, split = rest.rpartition(":")
        return ArrayRecordSource(directory, split)
    if kind == "tfds":
        name, _, split = rest.partition(":")
        return TfdsSource(name, split or "validation")
    if kind == "digits":
        return digits_source(rest or "test", size=image_size)
    if os.path.isdir(spec):
        return ImageFolderSource(spec)
    raise ValueError(f"data spec {spec!r}: use imagefolder:PATH, arrayrecord:DIR:SPLIT, tfds:NAME:SPLIT or "
                     "digits:SPLIT")


def source_labels(source) -> np.ndarray:
    """Every element's label, without decoding images where the source lets us (ImageFolder's file list, in-memory
    labels); otherwise by reading the elements."""
    items = getattr(source, "_items", None)  # ImageFolderSource keeps (path, label) pairs
    if items is not None:
        return np.asarray([label for _, label in items], np.int64)
    if hasattr(source, "labels"):
        return np.asarray(source.labels, np.int64)
    return np.asarray([int(source[i]["label"]) for i in range(len(source))], np.int64)


def per_class_indices(source, images_per_class: int | None) -> np.ndarray:
    """The first `images_per_class` elements of every class, in source order (None/0 = all)."""
    labels = source_labels(source)
    if not images_per_class:
        return np.arange(len(labels))
    keep, seen = [], {}
    for i, y in enumerate(labels):
        if seen.get(y, 0) < images_per_class:
            keep.append(i)
            seen[y] = seen.get(y, 0) + 1
    return np.asarray(keep, np.int64)


class Subset:
    """source[indices[i]] as element i (Grain-compatible random access)."""

    def __init__(self, source, indices):
        self.source, self.indices, self.classes = source, np.asarray(indices), source.classes

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return self.source[int(self.indices[i])]
