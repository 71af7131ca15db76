"""Plots (matplotlib, Agg backend: no display needed): the robustness grouped bar chart and the resolution-scaling
curves. Each function writes a PNG and returns its path."""

from __future__ import annotations

import os
from typing import Mapping, Sequence


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def best_and_worst(results: Mapping[str, Mapping[str, float]], clean: str = "Clean", n: int = 3
                   ) -> list[str]:
    """The transformations with the n highest and n lowest top-1 averaged over models (clean first, then best to
    worst). results: {model: {transformation: top1}}."""
    names = [t for t in next(iter(results.values())) if t != clean]
    mean = {t: sum(r[t] for r in results.values()) / len(results) for t in names}
    order = sorted(names, key=lambda t: -mean[t])
    picked = order[:n] + [t for t in order[-n:] if t not in order[:n]]
    return ([clean] if clean in next(iter(results.values())) else []) + picked


def robustness_bars(results: Mapping[str, Mapping[str, float]], path: str, transformations: Sequence[str] | None = None,
                    title: str = "Top-1 under image transformations") -> str:
    """Grouped bar chart: one group per transformation, one bar per model, the value printed on each bar.

    results: {model: {transformation: top-1 %}}; `transformations` selects and orders the groups (default: clean,
    the 3 best and the 3 worst, by the mean over models).
    """
    plt = _plt()
    import numpy as np

    models = list(results)
    groups = list(transformations) if transformations is not None else best_and_worst(results)
    width = 0.8 / max(len(models), 1)
    x = np.arange(len(groups))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(groups) * max(1, len(models)) / 2 + 2), 4.5))
    for i, m in enumerate(models):
        vals = [results[m][g] for g in groups]
        bars = ax.bar(x + (i - (len(models) - 1) / 2) * width, vals, width, label=m)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks(x, groups, rotation=20, ha="right")
    ax.set_ylabel("top-1 (%)")
    ax.set_ylim(0, min(100.0, max(max(r[g] for g in groups) for r in results.values()) * 1.15 + 1))
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def resolution_curves(rows: Sequence[Mapping], path: str, title: str = "Inference cost vs input resolution") -> str:
    """Three panels against resolution: throughput (img/s), peak memory (GiB) and GFLOPs, one line per model, plus a
    dotted "linear in pixels" reference through each model's first FLOPs point.

    rows: dicts with model, resolution, img_per_s, peak_memory_bytes, gflops (missing values are skipped).
    """
    plt = _plt()

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = (("img_per_s", "throughput (img/s)", 1.0), ("peak_memory_bytes", "peak memory (GiB)", 2.0 ** -30),
              ("gflops", "GFLOPs / image", 1.0))
    for ax, (key, label, scale) in zip(axes, panels):
        for m in models:
            pts = sorted((r["resolution"], r[key] * scale) for r in rows
                         if r["model"] == m and r.get(key) is not None)
            if not pts:
                continue
            line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m)
            if key == "gflops":
                r0, f0 = pts[0]
                ax.plot([p[0] for p in pts], [f0 * (p[0] / r0) ** 2 for p in pts], ":", color=line.get_color(),
                        alpha=0.6)
        ax.set_xlabel("input resolution (px)")
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[2].set_title("dotted: linear in pixels", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def accuracy_curves(runs: Mapping[str, Mapping[str, Sequence[float]]], path: str, goal: float | None = None,
                    title: str = "Test top-1 per epoch", zoom: float | None = 80.0) -> str:
    """Test top-1 against epoch, one colour per run: raw weights solid, EMA dashed, a dotted goal line.

    runs: {label: {"top1": [per-epoch %], "top1_ema": [per-epoch % or None]}} (evaluation once per epoch, as the
    cifar10_<device>.json results hold them). With `zoom`, a second panel shows the curves above that top-1, where
    runs that end close together are told apart.
    """
    plt = _plt()

    panels = 2 if zoom is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.2), squeeze=False)
    for ax in axes[0]:
        for i, (label, run) in enumerate(runs.items()):
            color = f"C{i}"
            top1 = list(run["top1"])
            ax.plot(range(1, len(top1) + 1), top1, color=color, lw=1.4, label=f"{label} (final {top1[-1]:.2f})")
            ema = [v for v in run.get("top1_ema") or [] if v is not None]
            if ema:
                ax.plot(range(1, len(ema) + 1), ema, color=color, lw=1.0, ls="--", alpha=0.8)
        if goal is not None:
            ax.axhline(goal, color="grey", ls=":", lw=1.0)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test top-1 (%)")
        ax.grid(alpha=0.3)
    axes[0][0].set_title(title + " (dashed: EMA)")
    axes[0][0].legend(fontsize=8, loc="lower right")
    if zoom is not None:
        top = max(max(r["top1"]) for r in runs.values())
        axes[0][1].set_ylim(zoom, max(top, goal or top) + 0.5)
        axes[0][1].set_title(f"above {zoom:g}%")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
