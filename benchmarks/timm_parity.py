"""Parity of the Flax ConvNeXt and Swin baselines with timm's PyTorch models (random weights, fp32).

    python benchmarks/timm_parity.py --out DIR              # needs torch + timm (the GPU machine has both)
    python benchmarks/timm_parity.py --check ARTIFACT.npz   # CPU only: re-checks a committed artifact

With torch + timm, for every registered baseline (ConvNeXt T/S/B, Swin T/S/B) and three narrow variants it:
  1. builds the timm model and re-draws every parameter from a seeded generator with O(1) scales (timm's own init
     makes ConvNeXt's layer scale 1e-6, which would hide the residual branches from the comparison);
  2. runs timm in fp32 on the CPU (exact fp32, no TF32) on random images;
  3. converts timm's state_dict with `vmamba_jax.convert.load_torch_checkpoint` (strict) and runs our model with
     `jax_default_matmul_precision=highest` (no TF32 on the GPU);
  4. compares logits: max |ours - timm| / max |timm| must be <= 1e-4.
The narrow variants (state_dict, inputs, logits) are saved to DIR/timm_parity_mini.npz (< 3 MB) so that
tests/test_baselines.py re-checks parity on CPU in CI; results go to DIR/timm_parity.json and a markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TOLERANCE = 1e-4

# Narrow variants kept in the committed artifact: (case, our registered name, overrides, timm kwargs, image size).
MINI_CASES = (
    ("convnext_mini", "convnext_tiny", dict(dims=(8, 16, 32, 64), depths=(1, 1, 2, 1), num_classes=10),
     dict(dims=(8, 16, 32, 64), depths=(1, 1, 2, 1), num_classes=10), 64, 2),
    # 224 with window 7: the standard layout (shifted windows in stages 0-2, one unshifted window in stage 3).
    ("swin_mini_224", "swin_tiny_patch4_window7_224",
     dict(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), num_classes=10),
     dict(img_size=224, embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), num_classes=10), 224, 1),
    # 64 px: stage 0 (16x16) is padded to whole 7x7 windows with a shift mask; stages 2-3 clamp the window.
    ("swin_mini_64", "swin_tiny_patch4_window7_224",
     dict(img_size=64, embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), num_classes=10),
     dict(img_size=64, embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), num_classes=10), 64, 2),
)
FULL_MODELS = ("convnext_tiny", "convnext_small", "convnext_base", "swin_tiny_patch4_window7_224",
               "swin_small_patch4_window7_224", "swin_base_patch4_window7_224")


def rel_err(a, b) -> float:
    """max |a - b| / max |b|."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


# ---------------------------------------------------------------------------------------------------------------------
# torch side (GPU machine)
# ---------------------------------------------------------------------------------------------------------------------

def randomize_(model, seed: int) -> None:
    """Re-draws every parameter with O(1) activations: weights N(0, 1/fan_in), biases and LN shifts N(0, 0.1^2),
    LN scales 1 + N(0, 0.1^2), layer scales U(0.5, 1), relative position tables N(0, 1)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name.endswith("gamma"):
                p.copy_(torch.rand(p.shape, generator=g) * 0.5 + 0.5)
            elif name.endswith("relative_position_bias_table"):
                p.copy_(r)
            elif p.ndim == 1:
                is_scale = name.endswith("weight")  # 1-D weights are LayerNorm scales
                p.copy_(1.0 + 0.1 * r if is_scale else 0.1 * r)
            else:
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(r / np.sqrt(fan_in))


def timm_model(name_or_kwargs, family: str):
    import timm

    if isinstance(name_or_kwargs, str):
        return timm.create_model(name_or_kwargs, pretrained=False)
    if family == "convnext":
        from timm.models.convnext import ConvNeXt
        return ConvNeXt(**name_or_kwargs)
    from timm.models.swin_transformer import SwinTransformer
    return SwinTransformer(**name_or_kwargs)


def run_torch(model, x_nhwc: np.ndarray) -> tuple[dict, np.ndarray]:
    import torch

    model = model.eval().float().cpu()
    with torch.no_grad():
        y = model(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2).copy())).numpy()
    sd = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    return sd, y


def run_ours(name: str, overrides: dict, state_dict: dict, x: np.ndarray) -> np.ndarray:
    import jax

    from vmamba_jax.convert import load_torch_checkpoint
    from vmamba_jax.models import create_model

    model = create_model(name, **overrides)
    variables = load_torch_checkpoint(state_dict, model)
    with jax.default_matmul_precision("highest"):
        return np.asarray(jax.jit(lambda v, x: model.apply(v, x))(variables, x))


def generate(out_dir: str, batch: int, seed: int) -> dict:
    import jax
    import timm
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows, artifact = [], {}
    cases = [(c, n, o, t, s, b) for c, n, o, t, s, b in MINI_CASES]
    cases += [(n, n, {}, n, 224, batch) for n in FULL_MODELS]
    for case, name, overrides, tkw, size, b in cases:
        family = "convnext" if name.startswith("convnext") else "swin"
        t0 = time.time()
        row = dict(case=case, model=name, overrides={k: list(v) if isinstance(v, tuple) else v
                                                     for k, v in overrides.items()}, image_size=size, batch=b)
        try:
            tm = timm_model(tkw, family)
            randomize_(tm, seed)
            x = rng.standard_normal((b, size, size, 3)).astype(np.float32)
            sd, ref = run_torch(tm, x)
            row["timm_state_dict_shapes"] = {k: list(v.shape) for k, v in sd.items()}
            if case in [c[0] for c in MINI_CASES]:  # saved before our side runs, so a failure can be debugged
                artifact[f"{case}/x"] = x
                artifact[f"{case}/logits"] = ref.astype(np.float32)
                for k, v in sd.items():
                    artifact[f"{case}/sd/{k}"] = v.astype(np.float32) if v.dtype.kind == "f" else v
            ours = run_ours(name, overrides, sd, x)
            err = rel_err(ours, ref)
            row.update(rel_err=err, max_abs_err=float(np.abs(ours - ref).max()), logit_scale=float(np.abs(ref).max()),
                       params=int(sum(v.size for k, v in sd.items())), passed=bool(err <= TOLERANCE))
            del row["timm_state_dict_shapes"]  # kept only when something failed
        except Exception as e:  # noqa: BLE001 -- record and continue: one broken case must not hide the others
            import traceback
            traceback.print_exc()
            row.update(passed=False, error=f"{type(e).__name__}: {str(e)[:2000]}")
        row["seconds"] = round(time.time() - t0, 1)
        print(json.dumps({k: v for k, v in row.items() if k not in ("overrides", "timm_state_dict_shapes")}),
              flush=True)
        rows.append(row)
        write_results(out_dir, rows, artifact, seed)  # after every case: a time-out still leaves what was done
    return write_results(out_dir, rows, artifact, seed)


def write_results(out_dir: str, rows: list, artifact: dict, seed: int) -> dict:
    import jax
    import timm
    import torch

    meta = dict(date=datetime.date.today().isoformat(), tolerance=TOLERANCE, seed=seed,
                torch=torch.__version__, timm=timm.__version__, jax=jax.__version__,
                device=str(jax.devices()[0].device_kind), backend=jax.default_backend(),
                python=platform.python_version(), torch_device="cpu (fp32)",
                jax_precision="highest", cases=rows,
                command="python benchmarks/timm_parity.py --out $OUT")
    if artifact:
        artifact["meta_json"] = np.frombuffer(json.dumps(
            {c: dict(model=n, overrides={k: list(v) if isinstance(v, tuple) else v for k, v in o.items()})
             for c, n, o, *_ in MINI_CASES}).encode(), np.uint8)
        np.savez_compressed(os.path.join(out_dir, "timm_parity_mini.npz"), **artifact)
    with open(os.path.join(out_dir, "timm_parity.json"), "w") as f:
        json.dump(meta, f, indent=1)
    with open(os.path.join(out_dir, "timm_parity.md"), "w") as f:
        f.write(markdown(meta))
    return meta


def markdown(meta: dict) -> str:
    lines = [f"# timm parity (random weights, fp32)\n",
             f"{meta['date']}, {meta['device']} ({meta['backend']}), jax {meta['jax']} (matmul precision "
             f"{meta['jax_precision']}), timm {meta['timm']} / torch {meta['torch']} on {meta['torch_device']}.\n",
             f"Command: `{meta['command']}`. Pass: max|ours - timm| / max|timm| <= {meta['tolerance']:g}.\n",
             "| case | model | input | params | rel err | pass |", "|---|---|---|---|---|---|"]
    for r in meta["cases"]:
        err = f"{r['rel_err']:.2e}" if "rel_err" in r else r.get("error", "")[:80]
        lines.append(f"| {r['case']} | {r['model']} | {r['batch']}x{r['image_size']}x{r['image_size']} | "
                     f"{r.get('params', '')} | {err} | {'yes' if r['passed'] else 'NO'} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------------
# CPU side: re-check the committed artifact
# ---------------------------------------------------------------------------------------------------------------------

def load_artifact(path: str) -> dict:
    """{case: dict(model, overrides, x, logits, state_dict)} from a timm_parity_mini.npz."""
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays.pop("meta_json").tobytes().decode())
    out = {}
    for case, m in meta.items():
        prefix = f"{case}/sd/"
        out[case] = dict(model=m["model"],
                         overrides={k: tuple(v) if isinstance(v, list) else v for k, v in m["overrides"].items()},
                         x=arrays[f"{case}/x"], logits=arrays[f"{case}/logits"],
                         state_dict={k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)})
    return out


def check(path: str) -> dict[str, float]:
    errs = {}
    for case, c in load_artifact(path).items():
        errs[case] = rel_err(run_ours(c["model"], c["overrides"], c["state_dict"], c["x"]), c["logits"])
        print(f"{case:16s} rel err {errs[case]:.2e} {'ok' if errs[case] <= TOLERANCE else 'FAIL'}")
    return errs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="generate (needs torch + timm): write artifact + results here")
    p.add_argument("--check", help="re-check a timm_parity_mini.npz artifact (CPU is enough)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.check:
        errs = check(a.check)
        sys.exit(0 if all(e <= TOLERANCE for e in errs.values()) else 1)
    if not a.out:
        p.error("give --out DIR (generate) or --check ARTIFACT")
    meta = generate(a.out, a.batch, a.seed)
    print(markdown(meta))
    sys.exit(0 if all(r["passed"] for r in meta["cases"]) else 1)


if __name__ == "__main__":
    main()
