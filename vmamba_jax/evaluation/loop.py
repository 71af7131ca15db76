"""The eval loop: a jitted, data-parallel forward with explicit NamedShardings, accumulating masked metric sums.

Batches come from `vmamba_jax.data.eval_dataset` (every image once; the last global batch padded with copies whose
`mask` is 0), so top-1/top-5/loss count each image exactly once whatever the batch size and device count.

Sharding: one mesh axis "data" over all devices (of all processes); images, labels and mask are split along the
batch, the variables are replicated. Each process feeds its own slice of the global batch
(`jax.make_array_from_process_local_data`), so the same code runs on one CPU, one GPU, a TPU slice or several hosts.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from vmamba_jax.evaluation.metrics import add_sums, finalize, masked_sums


def data_mesh(devices=None) -> jax.sharding.Mesh:
    """A 1-D mesh named "data" over `devices` (default: every device of every process)."""
    devices = jax.devices() if devices is None else devices
    return jax.sharding.Mesh(np.asarray(devices), ("data",))


class Evaluator:
    """Holds one model's jitted eval step on a mesh.

        ev = Evaluator(model, variables)
        logits = ev.logits(images)                       # (B, H, W, 3) float -> (B, classes) fp32
        sums = ev.sums(images, labels, mask)             # masked top1/top5/loss/count sums (device arrays)

    `variables` are placed once, replicated over the mesh. B (the global batch) must divide by the mesh size.
    """

    def __init__(self, model: nn.Module, variables: Any, mesh: jax.sharding.Mesh | None = None):
        self.model, self.mesh = model, mesh if mesh is not None else data_mesh()
        self.replicated = NamedSharding(self.mesh, P())
        self.batch_sharding = NamedSharding(self.mesh, P("data"))
        self.variables = jax.device_put(variables, self.replicated)

        def forward(variables, images):
            # A fixed "shortcut" key keeps faithful Res-VMamba deterministic here; other models ignore it.
            return model.apply(variables, images, train=False,
                               rngs={"shortcut": jax.random.PRNGKey(0)}).astype(jnp.float32)

        def step(variables, images, labels, mask):
            return masked_sums(forward(variables, images), labels, mask)

        self._logits = jax.jit(forward, in_shardings=(self.replicated, self.batch_sharding),
                               out_shardings=self.batch_sharding)
        self._sums = jax.jit(step, in_shardings=(self.replicated,) + (self.batch_sharding,) * 3,
                             out_shardings=self.replicated)

    @property
    def size(self) -> int:
        return self.mesh.size

    def put(self, local: np.ndarray) -> jax.Array:
        """This process's slice of a global batch -> a global array sharded along "data"."""
        return jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(local))

    def logits(self, images: np.ndarray) -> jax.Array:
        return self._logits(self.variables, self.put(images))

    def sums(self, images: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> dict:
        return self._sums(self.variables, self.put(images), self.put(np.asarray(labels, np.int32)),
                          self.put(np.asarray(mask, np.float32)))


def evaluate(model: nn.Module, variables: Any, batches: Iterable[dict], steps: int | None = None, *,
             mesh: jax.sharding.Mesh | None = None, progress: bool = True, desc: str = "eval",
             evaluator: Evaluator | None = None, on_batch: Callable[[int, dict], None] | None = None
             ) -> dict[str, float]:
    """Top-1/top-5 (%), mean cross-entropy and the exact image count over `batches`.

    batches: per-process dicts {"image": (b, H, W, 3) float, "label": (b,) int, "mask": (b,) 0/1} as made by
      `vmamba_jax.data.eval_dataset` (a batch without "mask" counts every example).
    steps: number of batches, for the progress bar (and to stop an infinite iterator).
    """
    ev = evaluator or Evaluator(model, variables, mesh)
    it = iter(batches)
    if progress and jax.process_index() == 0:
        from tqdm.auto import tqdm
        it = tqdm(it, total=steps, desc=desc, unit="batch", dynamic_ncols=True)
    acc = None
    for i, batch in enumerate(it):
        if steps is not None and i >= steps:
            break
        mask = batch.get("mask", np.ones(len(batch["label"]), np.float32))
        sums = ev.sums(batch["image"], batch["label"], mask)
        acc = add_sums(acc, sums)  # host transfer per batch: tiny, and keeps the tqdm postfix honest
        if on_batch is not None:
            on_batch(i, acc)
        if progress and jax.process_index() == 0 and hasattr(it, "set_postfix"):
            it.set_postfix(top1=f"{100 * acc['top1'] / max(acc['count'], 1):.2f}")
    if acc is None:
        raise ValueError("evaluate: the batch iterator was empty")
    return finalize(acc)
