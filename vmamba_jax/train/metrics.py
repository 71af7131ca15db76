"""Metrics logging: JSONL (one object per line, `{"step": s, ...}`) and TensorBoard event files, process 0 only."""

from __future__ import annotations

import json
import logging
import math
import os

import jax

logger = logging.getLogger("vmamba_jax.train")


class MetricWriter:
    def __init__(self, workdir: str, tensorboard: bool = True):
        self.enabled = jax.process_index() == 0
        self._jsonl = self._tb = None
        if not self.enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", buffering=1)
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:  # optional: JSONL stays the source of truth
                logger.warning("tensorboardX is not installed: no TensorBoard event files (pip install tensorboardX)")
            else:
                self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=30)

    def write(self, step: int, metrics: dict, prefix: str = "") -> None:
        if not self.enabled:
            return
        row = {"step": int(step)}
        for k, v in metrics.items():
            v = float(v) if not isinstance(v, (str, int)) else v
            row[prefix + k] = v
            if self._tb is not None and isinstance(v, (int, float)) and math.isfinite(v):
                self._tb.add_scalar(prefix + k, v, int(step))
        self._jsonl.write(json.dumps(row) + "\n")

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
