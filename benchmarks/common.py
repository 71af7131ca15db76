"""Shared benchmark plumbing: timing with synchronisation, environment record, JSON + markdown result files."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
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


def use_compilation_cache(cache_dir: str = "/tmp/jax_cache_bench") -> str:
    """Points this process and every child it starts at one persistent compilation cache (XLA's autotuning results
    included), caching every executable however quickly it compiled. Call before the first compile."""
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", cache_dir)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    return os.environ["JAX_COMPILATION_CACHE_DIR"]


# Seconds a timed child needs once its executables are in the cache (start-up, load, warm-up, timed steps): VMamba-S's
# took 85 s after a finished precompile (H200, 2026-12-01). XLA's cache does not hold the Mosaic GPU kernels: jaxlib
# compiles each distinct kernel when an executable is loaded, once per process, one at a time (CachedCompile in
# jaxlib/mosaic/gpu/custom_call.cc); VMamba-T's train step has 8 distinct ones (4 stages x forward/backward).
TIMED_RUN_RESERVE_S = 100.0


def precompile_window(timeout_s: float, budget_s: float, n_models: int, reserve_s: float = TIMED_RUN_RESERVE_S
                      ) -> float:
    """Seconds the parallel precompile may run: all of the budget but each model's timed run (`reserve_s`).

    A precompile killed early is wasted whole (nothing reaches the cache), so it gets as much as the timed runs that
    follow can spare; halving the budget killed VMamba-S and -B's 3-minute compiles (H200, 2026-12-01).
    """
    return max(1.0, min(timeout_s, budget_s - reserve_s * n_models))


def precompile(cmds: Sequence[Sequence[str]], timeout_s: float, log_dir: str | None = None) -> list[dict]:
    """Runs the child commands (each given `--compile_only`) all at once and waits for them.

    On the GPU a large train step spends minutes in compilation (XLA passes, autotuning, LLVM, ptxas: host work
    mostly), so compiling N models in parallel into the shared persistent cache (`use_compilation_cache`) and then
    timing them one at a time, each loading its XLA executables from the cache, saves the XLA part of every compile
    but the slowest. It does not save the Mosaic GPU kernels' compile, which every process pays again (see
    TIMED_RUN_RESERVE_S). Returns one {"cmd", "rc", "seconds"} per child (rc None: killed at `timeout_s`).
    """
    t0, procs, logs = time.perf_counter(), [], []
    for i, cmd in enumerate(cmds):
        log = open(os.path.join(log_dir, f"precompile_{i}.log"), "w") if log_dir else subprocess.DEVNULL
        logs.append(log)
        procs.append(subprocess.Popen([*cmd, "--compile_only"], stdout=log, stderr=subprocess.STDOUT))
    out = []
    for cmd, proc in zip(cmds, procs):
        try:
            rc = proc.wait(timeout=max(1.0, timeout_s - (time.perf_counter() - t0)))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = None
        out.append(dict(cmd=" ".join(cmd), rc=rc, seconds=round(time.perf_counter() - t0, 1)))
    for log in logs:
        if log is not subprocess.DEVNULL:
            log.close()
    return out


def merge_records(path: str | None, rows: list[dict], measured: Callable[[dict], bool], key: str = "model"
                  ) -> list[dict]:
    """`rows` merged into the records of an earlier results file (`--merge`), so one table can be filled over
    several device calls: a new row replaces the old row of its `key`, unless the new one failed where the old was
    `measured`; rows for other keys are kept in their order."""
    if not path or not os.path.exists(path):
        return list(rows)
    with open(path) as f:
        merged = json.load(f)
    for row in rows:
        i = next((i for i, old in enumerate(merged) if old.get(key) == row.get(key)), None)
        if i is None:
            merged.append(row)
        elif measured(row) or not measured(merged[i]):
            merged[i] = row
    return merged


def commands_md(rows: list[dict], key: str = "model") -> list[str]:
    """Markdown lines naming the command (each record's "command") that produced each row."""
    by_cmd: dict[str, list[str]] = {}
    for r in rows:
        by_cmd.setdefault(r.get("command", "?"), []).append(str(r.get(key)))
    if len(by_cmd) == 1:
        return [f"Command: `{next(iter(by_cmd))}`."]
    return ["Commands:"] + [f"- {', '.join(names)}: `{cmd}`" for cmd, names in by_cmd.items()]


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
