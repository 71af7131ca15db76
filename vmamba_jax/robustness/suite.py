"""The robustness run: several models on the same transformed images, top-1 per (model, transformation) and the drop
from clean, written as JSON, markdown and a grouped bar chart.

Per global batch of base images (decoded, official eval resize + center crop, uint8), each transformation is applied
once (thread pool) and the normalised result is fed to every model, so models see identical pixels. The last batch is
padded with copies whose mask is 0; each process transforms and feeds only its own slice of the batch.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Mapping, Sequence

import jax
import numpy as np

from vmamba_jax.data.sources import decode_image
from vmamba_jax.data.transforms import IMAGENET_MEAN, IMAGENET_STD, _normalise, eval_resize_crop
from vmamba_jax.evaluation.loop import Evaluator
from vmamba_jax.evaluation.metrics import add_sums, finalize
from vmamba_jax.robustness.table import CLEAN, apply


def run(evaluators: Mapping[str, Evaluator], source, transforms: Sequence[str], *, batch_size: int = 64,
        seed: int = 0, image_size: int = 224, crop_pct: float = 0.875, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        workers: int = 8, progress: bool = True) -> dict:
    """-> {model: {transformation: {"top1", "top5", "loss", "count"}}} over every element of `source`.

    `source` elements are {"image": bytes or uint8 array, "label": int} (e.g. a `vmamba_jax.evaluation.data.Subset`
    of images_per_class images per class). Element i's transformations are seeded by (seed, name, i).
    """
    n = len(source)
    size = next(iter(evaluators.values())).size
    if batch_size % size:
        raise ValueError(f"batch size {batch_size} must be a multiple of the {size} devices")
    pc, pi = jax.process_count(), jax.process_index()
    local = batch_size // pc
    steps = -(-n // batch_size)
    acc = {m: {t: None for t in transforms} for m in evaluators}
    pool = ThreadPoolExecutor(max(1, workers))

    def base(i: int) -> np.ndarray:
        el = source[i % n]
        return eval_resize_crop(decode_image(el["image"]), image_size, crop_pct)

    it = range(steps)
    if progress and pi == 0:
        from tqdm.auto import tqdm
        it = tqdm(it, desc="robustness", unit="batch", dynamic_ncols=True)
    for step in it:
        idx = np.arange(step * batch_size, (step + 1) * batch_size)[pi * local:(pi + 1) * local]
        labels = np.asarray([int(source[i % n]["label"]) for i in idx], np.int32)
        mask = (idx < n).astype(np.float32)
        bases = list(pool.map(base, idx))
        for t in transforms:
            imgs = list(pool.map(lambda a: apply(t, a[0], seed, int(a[1]) % n), zip(bases, idx)))
            x = np.stack([_normalise(im, mean, std) for im in imgs])
            for m, ev in evaluators.items():
                acc[m][t] = add_sums(acc[m][t], ev.sums(x, labels, mask))
    pool.shutdown()
    return {m: {t: finalize(acc[m][t]) for t in transforms} for m in evaluators}


def table(results: Mapping[str, Mapping[str, dict]]) -> tuple[list[str], list[list]]:
    """(headers, rows): one row per transformation, per model its top-1 and the drop from clean (points)."""
    models = list(results)
    transforms = list(next(iter(results.values())))
    headers = ["transformation"] + [h for m in models for h in (f"{m} top-1", f"{m} drop")]
    rows = []
    for t in transforms:
        row = [t]
        for m in models:
            top1 = results[m][t]["top1"]
            row += [top1, top1 - results[m][CLEAN]["top1"] if CLEAN in results[m] else None]
        rows.append(row)
    return headers, rows


def write(results: Mapping[str, Mapping[str, dict]], out_dir: str, env: dict, config: dict) -> dict[str, str]:
    """robustness.json, robustness.md and robustness.png (clean, 3 best and 3 worst transformations) in out_dir."""
    from vmamba_jax.evaluation.plots import robustness_bars
    from vmamba_jax.evaluation.report import markdown_table, write_json, write_markdown

    headers, rows = table(results)
    paths = {"json": write_json(os.path.join(out_dir, "robustness.json"),
                                {"env": env, "config": config, "results": results})}
    n = next(iter(next(iter(results.values())).values()))["count"]
    body = (f"{n} images ({config.get('images_per_class')} per class), seed {config.get('seed')}; magnitudes: "
            "`vmamba_jax/robustness/table.py`. Drop = top-1 minus clean top-1 (points).\n\n")
    paths["md"] = write_markdown(os.path.join(out_dir, "robustness.md"), "Robustness to image transformations",
                                 body + markdown_table(headers, rows), env)
    top1 = {m: {t: r["top1"] for t, r in res.items()} for m, res in results.items()}
    if len(next(iter(top1.values()))) > 1:
        paths["png"] = robustness_bars(top1, os.path.join(out_dir, "robustness.png"))
    return paths
