"""Shared benchmark plumbing: timing with synchronisation, environment record, JSON + markdown result files."""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
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


def time_fn(fn: Callable[[], object], warmup: int = 3, repeats: int = 20, calls: int = 1) -> list[float]:
    """Per-call seconds of `fn` (which must return jax arrays) after `warmup` calls, one per repeat.

    calls=1: each call synchronised, so a time includes the host's dispatch and the wait for the result. calls > 1:
    a repeat is `calls` back-to-back calls synchronised once (on the last: one stream runs them in order), divided by
    `calls`, so the host's dispatch overlaps the device's work as in a model's step, or in CUDA-event timing of a
    stream (spec/targets.md's official numbers): at sub-millisecond kernels the two differ by the host's ~0.1-0.3 ms.
    """
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls - 1):
            fn()  # dropped: its buffers free once the stream is done with them
        jax.block_until_ready(fn())
        times.append((time.perf_counter() - t) / calls)
    return times


def disable_command_buffers() -> None:
    """XLA runs a jitted call's kernels as CUDA graphs ("command buffers"), which a profiler trace shows as one op
    (`command_buffer_1`): turn them off for profiling so each kernel and fusion is its own event. Call before the
    backend starts (the first jax.devices() or compile)."""
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_gpu_enable_command_buffer="


def use_compilation_cache(cache_dir: str = "/tmp/jax_cache_bench") -> str:
    """Points this process and every child it starts at one persistent compilation cache, caching every executable
    however quickly it compiled (the library's `use_compilation_cache` with no minimum). Call before the first
    compile."""
    from vmamba_jax.train.compile_cache import use_compilation_cache as use_cache

    return use_cache(cache_dir, min_compile_secs=0)


# A benchmark child that runs under `run_in_turns` finds its turn's file prefix here.
TURN_ENV = "VMAMBA_BENCH_TURN"


def wait_for_turn() -> float:
    """Called by a benchmark child between its compile (and warm-up) and its timing. Under `run_in_turns` it says
    "compiled" and blocks until the parent gives this process the GPU; otherwise it returns at once. Returns the
    seconds it waited."""
    prefix = os.environ.get(TURN_ENV)
    if not prefix:
        return 0.0
    t0 = time.perf_counter()
    with open(prefix + ".ready", "w") as f:
        f.write(repr(time.time()))  # the parent's record of when this process had compiled
    while not os.path.exists(prefix + ".go"):
        time.sleep(0.1)
    return time.perf_counter() - t0


def run_in_turns(cmds: Sequence[Sequence[str]], logs: Sequence[str], budget_s: float, turn_reserve_s: float = 60.0
                 ) -> list[dict]:
    """Runs the child commands all at once, so that they compile in parallel, and lets them time one at a time.

    Each child calls `wait_for_turn()` once it has compiled and warmed up. On the GPU a large train step spends
    minutes compiling (XLA's passes, autotuning, LLVM, ptxas, and the Mosaic GPU kernels: host work mostly), so N
    models cost the slowest compile plus N timings instead of N compiles. The processes are the timed ones: a
    separate precompile into the persistent cache saved only XLA's part, since jaxlib compiles the Mosaic GPU kernels
    when an executable is loaded, once per process, one at a time, and never caches them on disk (CachedCompile in
    jaxlib/mosaic/gpu/custom_call.cc); VMamba-S's timed run still took 85 s before its first step after a finished
    precompile (H200, 2026-12-01). Waiting children hold their GPU memory but run nothing.

    The first turn is given when every child is ready or has exited, or when only `turn_reserve_s` a child is left of
    `budget_s`; a child still compiling then is given its turn anyway (its record's `others_compiling` counts, for
    each turn, the children that were still compiling during it). Each child's output goes to its file in `logs`; no
    child outlives `budget_s`. Returns one {"cmd", "rc" (None: killed), "ready_s", "start_s", "end_s",
    "others_compiling"} per child, in seconds from the start.
    """
    t0, t0_wall, turn_dir = time.perf_counter(), time.time(), tempfile.mkdtemp(prefix="bench_turns_")
    prefixes = [os.path.join(turn_dir, str(i)) for i in range(len(cmds))]
    procs, files = [], []
    for cmd, log, prefix in zip(cmds, logs, prefixes):
        files.append(open(log, "w"))
        procs.append(subprocess.Popen(list(cmd), stdout=files[-1], stderr=subprocess.STDOUT,
                                      env={**os.environ, TURN_ENV: prefix}))
    now = lambda: time.perf_counter() - t0  # noqa: E731
    ready_at: dict[int, float] = {}

    def poll_ready():
        for i, prefix in enumerate(prefixes):
            if i not in ready_at and os.path.exists(prefix + ".ready"):
                with open(prefix + ".ready") as f:
                    stamp = f.read()
                if stamp:  # else still being written: the next poll reads it
                    ready_at[i] = float(stamp) - t0_wall

    def compiling(skip):
        poll_ready()
        return sum(i not in ready_at and i != skip and p.poll() is None for i, p in enumerate(procs))

    first_turn_at = budget_s - turn_reserve_s * len(cmds)
    while now() < first_turn_at and compiling(None):
        time.sleep(0.2)
    out = []
    for i, (cmd, proc, prefix) in enumerate(zip(cmds, procs, prefixes)):
        start = now()
        open(prefix + ".go", "w").close()
        others = compiling(i)
        try:
            rc = proc.wait(timeout=max(1.0, budget_s - now()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = None
        poll_ready()
        out.append(dict(cmd=" ".join(cmd), rc=rc, ready_s=round(ready_at[i], 1) if i in ready_at else None,
                        start_s=round(start, 1), end_s=round(now(), 1), others_compiling=max(others, compiling(i))))
    for f in files:
        f.close()
    shutil.rmtree(turn_dir, ignore_errors=True)
    return out


def read_records(path: str | None) -> list[dict]:
    """The records of an earlier results file (a JSON list), [] when there is none."""
    if not path or not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)


def merge_records(path: str | None, rows: list[dict], measured: Callable[[dict], bool], key: str = "model"
                  ) -> list[dict]:
    """`rows` merged into the records of an earlier results file (`--merge`), so one table can be filled over
    several device calls: a new row replaces the old row of its `key`, unless the new one failed where the old was
    `measured`; rows for other keys are kept in their order."""
    merged = read_records(path)
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


def scan_impl_name(implementation, model) -> str:
    """What `implementation` (one name, or one per stage) resolves to for `model` on this platform: one name, or a
    comma list of one per stage when the stages differ (results record what ran, not "auto")."""
    from pallas_kernels.ss2d import resolve_implementation
    from vmamba_jax.models.vmamba import stage_scan_implementations

    d_state = getattr(model, "ssm_d_state", None)
    names = [resolve_implementation(s, d_state=d_state)
             for s in stage_scan_implementations(implementation, len(getattr(model, "depths", (0,))))]
    return names[0] if len(set(names)) == 1 else ",".join(names)


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
