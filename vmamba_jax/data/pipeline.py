"""Grain pipelines: an infinite, per-host-sharded, checkpointable train stream and a padded, masked eval pass.

Train: source -> DecodedSource -> seed/shuffle (reshuffled each epoch) -> repeat -> random_map(augment) ->
batch(per-host batch) -> this host's batches -> to_iter_dataset (thread prefetch) -> optional mp_prefetch workers.
Host p of P takes batches p, p+P, ... of per-host size B/P, so the global batch of step s is always elements
[s*B, (s+1)*B) of the shuffled stream, whatever the process count (a 2-process run sees the same global batches as a
1-process run). Augmentation randomness is keyed by the element's index in the stream, so a seed fixes everything.

Eval: every element exactly once; the last global batch is padded with copies and a `mask` of 0.
"""

from __future__ import annotations

import grain
import numpy as np

from vmamba_jax.data.sources import DecodedSource


def check_classes(train_source, eval_source) -> None:
    """Raises if train and eval class lists differ (an eval folder with a missing/extra class is a silent bug)."""
    if list(train_source.classes) != list(eval_source.classes):
        a, b = set(train_source.classes), set(eval_source.classes)
        raise ValueError(f"train/eval class mismatch: only in train {sorted(a - b)[:10]}, only in eval "
                         f"{sorted(b - a)[:10]} ({len(a)} vs {len(b)} classes)")


def _iter(ds: grain.MapDataset, worker_count: int, prefetch: int, threads: int) -> grain.IterDataset:
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch))
    if worker_count > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # Grain workers read absl flags; outside an absl app they were never parsed
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count, per_worker_buffer_size=2))
    return it


def train_dataset(source, transform, *, global_batch: int, seed: int, process_index: int = 0,
                  process_count: int = 1, worker_count: int = 0, threads: int = 4, prefetch: int = 8
                  ) -> grain.IterDataset:
    """Infinite stream of per-host batches {"image": (B/P, H, W, 3) f32, "label": (B/P,) i32, "corrupt": (B/P,)}."""
    if global_batch % process_count:
        raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
    local = global_batch // process_count
    ds = grain.MapDataset.source(DecodedSource(source)).seed(seed).shuffle().repeat(None)
    ds = ds.random_map(transform).batch(local, drop_remainder=True)
    ds = ds[process_index::process_count]
    return _iter(ds, worker_count, prefetch, threads)


class _PaddedSource:
    """`total` >= len(source) elements: element i is source[i % n] with mask = (i < n)."""

    def __init__(self, source, total: int):
        self.source, self.total, self.n = source, total, len(source)

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, i: int) -> dict:
        return {**self.source[i % self.n], "mask": np.float32(i < self.n)}


def eval_dataset(source, transform, *, global_batch: int, process_index: int = 0, process_count: int = 1,
                 worker_count: int = 0, threads: int = 4, prefetch: int = 8) -> tuple[grain.IterDataset, int]:
    """One pass, padded to whole global batches; returns (per-host batches with "mask", number of global batches)."""
    if global_batch % process_count:
        raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
    steps = -(-len(source) // global_batch)
    ds = grain.MapDataset.source(_PaddedSource(DecodedSource(source), steps * global_batch))
    ds = ds.map(transform).batch(global_batch // process_count, drop_remainder=True)
    ds = ds[process_index::process_count]
    return _iter(ds, worker_count, prefetch, threads), steps
