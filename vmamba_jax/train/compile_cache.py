"""JAX's persistent compilation cache, pointed at one directory for this process and the processes it starts."""

from __future__ import annotations

import os

import jax


def use_compilation_cache(cache_dir: str | None, min_compile_secs: float = 1.0) -> str | None:
    """Caches every executable that took at least `min_compile_secs` to compile (XLA's autotuning results included)
    in `cache_dir` (~ expanded), unless JAX_COMPILATION_CACHE_DIR already names a directory: the environment wins, so
    tests and benchmarks keep their own. None or "" with no such variable leaves JAX as it is. Call before the first
    compile; returns the directory in use.

    Why: a restarted run (preemption, a crash) then loads its train and eval steps instead of compiling them again,
    which takes 2 (VMamba-T) to 4-5 (S, B) minutes on an H200 (benchmarks/results/train_throughput_h200.md)."""
    if cache_dir and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.expanduser(cache_dir)
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", str(min_compile_secs))
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        return None
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", min_compile_secs)))
    return os.environ["JAX_COMPILATION_CACHE_DIR"]
