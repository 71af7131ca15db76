"""`python -m vmamba_jax.data.prepare SRC_ROOT OUT_DIR [--splits train,val] [--shards 64]`

Packs ImageFolder splits (SRC_ROOT/<split>/<class>/<image>) into ArrayRecord shards
OUT_DIR/<split>-XXXXX-of-YYYYY.array_record plus OUT_DIR/classes.json, read back by `ArrayRecordSource`
(the fast path on pods: few large files, random access, no per-image open()). Images are stored as their original
encoded bytes (no re-encoding), in a fixed order: class, then file name.
"""

from __future__ import annotations

import argparse
import json
import os

from vmamba_jax.data.sources import ImageFolderSource, encode_record


def prepare(src_root: str, out_dir: str, splits=("train", "val"), shards: int = 64) -> dict:
    from array_record.python.array_record_module import ArrayRecordWriter

    os.makedirs(out_dir, exist_ok=True)
    classes, counts = None, {}
    for split in splits:
        src = ImageFolderSource(os.path.join(src_root, split), classes)
        classes = classes or src.classes
        n_shards = max(1, min(shards, len(src)))
        writers = [ArrayRecordWriter(os.path.join(out_dir, f"{split}-{k:05d}-of-{n_shards:05d}.array_record"),
                                     "group_size:1") for k in range(n_shards)]
        per = -(-len(src) // n_shards)  # contiguous blocks keep the global order when shards are concatenated
        for i in range(len(src)):
            el = src[i]
            writers[i // per].write(encode_record(el["label"], el["image"]))
        for w in writers:
            w.close()
        counts[split] = len(src)
    with open(os.path.join(out_dir, "classes.json"), "w") as f:
        json.dump(classes, f)
    return counts


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src_root")
    p.add_argument("out_dir")
    p.add_argument("--splits", default="train,val")
    p.add_argument("--shards", type=int, default=64)
    a = p.parse_args(argv)
    print(prepare(a.src_root, a.out_dir, tuple(a.splits.split(",")), a.shards))


if __name__ == "__main__":
    main()
