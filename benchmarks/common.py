"""Shared benchmark plumbing: timing with synchronisation, environment record, JSON + markdown result files."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable, Sequence

import jax


def device_name() -> str:
    d = jax.devices()[0]
    return getattr(d, "device_kind", d.platform).replace(" ", "_")


def device_tag() -> tuple[str, str]:
    """(device kind, short tag for result file names): ("NVIDIA H100 80GB HBM3", "h100"), ("cpu", "cpu")."""
    kind = jax.devices()[0].device_kind
    tag = "cpu" if jax.devices()[0].platform == "cpu" else kind.lower().replace("nvidia", "").strip().split()[0]
    return kind, tag


def environment() -> dict:
    return dict(device=jax.devices()[0].device_kind, platform=jax.default_backend(), jax_version=jax.__version__,
                python=platform.python_version(), date=datetime.date.today().isoformat(),
                command="python " + " ".join(sys.argv))


def time_fn(fn: Callable[[], object], warmup: int = 3, repeats: int = 20) -> list[float]:
    """Per-call seconds of `fn` (which must return jax arrays), each call synchronised, after `warmup` calls."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return times


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def peak_memory_gib() -> float | None:
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2 ** 30


def write_results(stem: str, records: list[dict], columns: Sequence[str], title: str) -> str:
    """Writes benchmarks/results/<stem>.json (records) and <stem>.md (a table); returns the JSON path."""
    out_dir = os.environ.get("BENCH_OUT_DIR", os.path.join(os.path.dirname(__file__), "results"))
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{stem}.json")
    with open(path, "w") as f:
        json.dump(records, f, indent=2)
    env = {k: records[0][k] for k in ("device", "jax_version", "date", "command")} if records else {}
    lines = [f"# {title}", "", " | ".join(f"{k}: `{v}`" for k, v in env.items()), "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in records:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |")
    with open(os.path.join(out_dir, f"{stem}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 100 else f"{v:.0f}"
    return "" if v is None else str(v)
