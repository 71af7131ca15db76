"""Random-access data sources for Grain: ImageFolder directories, ArrayRecord shards, TFDS, in-memory arrays.

Every source returns elements `{"image": ..., "label": int}` where "image" is either encoded bytes (JPEG/PNG, decoded
later in `DecodedSource`, inside the Grain workers) or a uint8 (H, W, 3) array. Sources are picklable (Grain workers
are spawned processes) and expose `classes` (list of class names, index = label).
"""

from __future__ import annotations

import glob
import json
import os
import struct
from typing import Sequence

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff", ".gif")


class ImageFolderSource:
    """`root/<class>/<image>` (the ImageNet / torchvision ImageFolder layout); labels follow sorted class names."""

    def __init__(self, root: str, classes: Sequence[str] | None = None):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"ImageFolder: {root!r} is not a directory")
        found = sorted(d.name for d in os.scandir(root) if d.is_dir())
        if not found:
            raise ValueError(f"ImageFolder: no class subfolders in {root!r}")
        self.classes = list(classes) if classes is not None else found
        index = {c: i for i, c in enumerate(self.classes)}
        self._items: list[tuple[str, int]] = []
        for c in found:
            if c not in index:
                raise ValueError(f"ImageFolder: class {c!r} in {root!r} is not among the expected classes")
            for dirpath, _, files in sorted(os.walk(os.path.join(root, c))):
                for f in sorted(files):
                    if f.lower().endswith(IMAGE_EXTENSIONS):
                        self._items.append((os.path.join(dirpath, f), index[c]))
        if not self._items:
            raise ValueError(f"ImageFolder: no images ({'/'.join(IMAGE_EXTENSIONS)}) under {root!r}")

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i: int) -> dict:
        path, label = self._items[i]
        with open(path, "rb") as f:
            return {"image": f.read(), "label": label}

    def __repr__(self):
        return f"ImageFolderSource({len(self)} images, {len(self.classes)} classes)"


# ArrayRecord record layout written by `prepare`: 4-byte little-endian label, then the encoded image bytes.
def encode_record(label: int, image_bytes: bytes) -> bytes:
    return struct.pack("<i", int(label)) + image_bytes


def decode_record(record: bytes) -> dict:
    return {"label": struct.unpack("<i", record[:4])[0], "image": record[4:]}


class ArrayRecordSource:
    """Shards `<dir>/<split>-XXXXX-of-YYYYY.array_record` + `<dir>/classes.json`, written by `vmamba_jax.data.prepare`."""

    def __init__(self, directory: str, split: str):
        import grain

        paths = sorted(glob.glob(os.path.join(directory, f"{split}-*.array_record")))
        if not paths:
            raise ValueError(f"ArrayRecord: no shards {split}-*.array_record in {directory!r} (run `python -m "
                             f"vmamba_jax.data.prepare`)")
        with open(os.path.join(directory, "classes.json")) as f:
            self.classes = json.load(f)
        self._source = grain.sources.ArrayRecordDataSource(paths)
        if len(self._source) == 0:
            raise ValueError(f"ArrayRecord: shards in {directory!r} hold no records")

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, i: int) -> dict:
        return decode_record(self._source[i])


class TfdsSource:
    """`tfds.data_source(name, split)` over a TFDS dataset prepared as ArrayRecord (needs tensorflow-datasets)."""

    def __init__(self, name: str, split: str, data_dir: str | None = None, image_key: str = "image",
                 label_key: str = "label"):
        import tensorflow_datasets as tfds  # optional dependency, only for this source

        self._source = tfds.data_source(name, split=split, data_dir=data_dir,
                                        builder_kwargs={"file_format": "array_record"})
        self.classes = list(self._source.dataset_info.features[label_key].names)
        self._keys = (image_key, label_key)
        if len(self._source) == 0:
            raise ValueError(f"TFDS: {name}[{split}] is empty")

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, i: int) -> dict:
        el = self._source[i]
        return {"image": np.asarray(el[self._keys[0]]), "label": int(el[self._keys[1]])}


class ArraySource:
    """In-memory uint8 images (N, H, W, 3) and int labels (N,); `corrupt` (N,) flags elements that stand in for a
    corrupt image (`decode_in_memory`), counted again every epoch as `DecodedSource` counts them."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: Sequence[str],
                 corrupt: np.ndarray | None = None):
        if len(images) == 0:
            raise ValueError("ArraySource: empty dataset")
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"ArraySource: want uint8 (N, H, W, 3) images, got {images.dtype} {images.shape}")
        self.images, self.labels, self.classes = images, np.asarray(labels, np.int32), list(classes)
        self.corrupt = None if corrupt is None else np.asarray(corrupt, np.int32)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        el = {"image": self.images[i], "label": int(self.labels[i])}
        if self.corrupt is not None:
            el["corrupt"] = int(self.corrupt[i])
        return el


def decode_in_memory(source, max_mib: float, threads: int = 16) -> ArraySource | None:
    """The whole source decoded once, as an ArraySource in host memory, when it fits in max_mib and its images all
    have one shape; else None (the Grain workers go on decoding every epoch).

    Why: on small images decoding is a large share of the workers' time (CIFAR-10: 0.18 of 0.48 ms per image for
    decode + crop, flip, RandAugment and erasing at 32x32 on one core), and the workers bounded the H200's training.
    CIFAR-10's 50k train images take 150 MiB; threads decode them in a few seconds (PIL releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    decoded = DecodedSource(source)
    first = decoded[0]["image"]
    if len(source) * first.nbytes > max_mib * 2 ** 20:
        return None
    with ThreadPoolExecutor(threads) as pool:
        els = list(pool.map(decoded.__getitem__, range(len(source))))
    if any(e["image"].shape != first.shape for e in els):
        return None
    return ArraySource(np.stack([e["image"] for e in els]), np.array([e["label"] for e in els]), source.classes,
                       corrupt=np.array([e["corrupt"] for e in els]))


def decode_image(image) -> np.ndarray:
    """Encoded bytes or an array -> uint8 (H, W, 3) RGB. Raises on corrupt data."""
    if isinstance(image, np.ndarray):
        img = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=-1)
        return np.ascontiguousarray(img[..., :3]).astype(np.uint8, copy=False)
    import io

    from PIL import Image

    with Image.open(io.BytesIO(image)) as im:
        return np.asarray(im.convert("RGB"))


class DecodedSource:
    """Decodes each element; a corrupt image is replaced by the next decodable one and flagged `corrupt=1`.

    Why replace instead of filter: batches keep a fixed shape (one jit compilation, exact step count) and the flag
    travels with the batch from the Grain workers to the trainer, which sums it per epoch.
    """

    def __init__(self, source, max_tries: int = 16):
        self.source, self.max_tries = source, max_tries
        self.classes = source.classes

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        n = len(self.source)
        for k in range(self.max_tries):
            el = self.source[(i + k) % n]
            try:
                img = decode_image(el["image"])
            except Exception:  # noqa: BLE001 -- any decode failure counts as a corrupt image
                continue
            corrupt = k > 0 or bool(el.get("corrupt", 0))  # a stand-in decoded earlier (decode_in_memory)
            return {"image": img, "label": np.int32(el["label"]), "corrupt": np.int32(corrupt)}
        raise RuntimeError(f"{self.max_tries} consecutive corrupt images from index {i}")
