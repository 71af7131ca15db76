"""Evaluate models: top-1 / top-5 / loss on a dataset split, or the robustness study (`--robustness`).

    # accuracy of an official checkpoint (converted on the fly) on ImageNet val, bf16
    python eval.py --model vmamba_tiny_s1l8=vssm1_tiny_0230s_ckpt_epoch_264.pth --data /data/imagenet/val
    # our own training run, EMA weights, fp32, ArrayRecord shards
    python eval.py --model vmamba_tiny_s1l8=workdirs/run1 --ema --dtype float32 --data arrayrecord:/data/ar:val
    # the robustness study: 15 images per class, three models sharing the transformed images
    python eval.py --robustness --images-per-class 15 --data /data/imagenet/val \
        --model vmamba_base_s2l15=vssm_base.pth --model swin_base_patch4_window7_224=swin_b.pth \
        --model convnext_base=convnext_b.safetensors

`--model NAME[=WEIGHTS]` repeats; WEIGHTS is a .pth/.safetensors/.npz file (official VMamba or timm names), one of our
Orbax checkpoint directories, or omitted / "random" (random init, for smoke tests). Data: imagefolder:PATH (or a
plain directory), arrayrecord:DIR:SPLIT, tfds:NAME:SPLIT, digits:test. The eval transform is the official one
(resize to size/crop_pct bicubic, center crop, ImageNet normalisation). Runs on whatever JAX sees (GPU, TPU, CPU),
data-parallel over every device; the last batch is padded and masked so each image counts exactly once.
Outputs (--out, default eval_results/): eval.json + eval.md, or robustness.json + robustness.md + robustness.png.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import jax
import jax.numpy as jnp

from vmamba_jax.evaluation import data as eval_data
from vmamba_jax.evaluation.loop import Evaluator, data_mesh, evaluate
from vmamba_jax.evaluation.report import environment, markdown_table, write_json, write_markdown
from vmamba_jax.evaluation.weights import load_variables
from vmamba_jax.models import create_model, get_entry


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--model", action="append", required=True, metavar="NAME[=WEIGHTS]")
    p.add_argument("--data", required=True, help="imagefolder:PATH | arrayrecord:DIR:SPLIT | tfds:NAME:SPLIT | "
                                                 "digits:SPLIT | PATH")
    p.add_argument("--ema", action="store_true", help="use the EMA weights (ours: ema_params; .pth: model_ema)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="compute dtype")
    p.add_argument("--batch-size", type=int, default=128, help="global batch (a multiple of the device count)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--crop-pct", type=float, default=0.875, help="eval resize = image_size / crop_pct (256 at 224)")
    p.add_argument("--num-classes", type=int, default=None, help="override the model's head size")
    p.add_argument("--scan-implementation", default=None, help="VMamba selective-scan implementation")
    p.add_argument("--workers", type=int, default=8, help="decode/transform threads (Grain threads for eval)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images (smoke tests)")
    p.add_argument("--out", default="eval_results")
    p.add_argument("--no-progress", action="store_true")
    r = p.add_argument_group("robustness")
    r.add_argument("--robustness", action="store_true", help="run the 20 transformations (+ clean)")
    r.add_argument("--images-per-class", type=int, default=15, help="images per class for --robustness (0 = all)")
    r.add_argument("--transforms", default="all", help="comma-separated subset of the transformations")
    r.add_argument("--seed", type=int, default=0, help="seed of the transformations")
    return p.parse_args(argv)


def build(spec: str, args, num_classes: int | None):
    name, _, weights = spec.partition("=")
    entry = get_entry(name)
    overrides = {"dtype": getattr(jnp, args.dtype)}
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    if args.scan_implementation and entry.cls.__name__ == "VSSM":
        overrides["scan_implementation"] = args.scan_implementation
    if entry.cls.__name__ == "SwinTransformer":
        overrides["img_size"] = args.image_size
    model = create_model(name, **overrides)
    variables, desc = load_variables(model, weights or None, ema=args.ema)
    return name, model, variables, desc


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log = logging.getLogger("eval")
    source = eval_data.make_source(args.data, args.image_size)
    if args.robustness:
        source = eval_data.Subset(source, eval_data.per_class_indices(source, args.images_per_class))
    if args.limit:
        source = eval_data.Subset(source, range(min(args.limit, len(source))))
    num_classes = args.num_classes
    if num_classes is None and len(source.classes) != 1000:
        num_classes = len(source.classes)  # a non-ImageNet dataset: size the head to it
    env = environment()
    mesh = data_mesh()
    log.info(f"{len(source)} images, {len(source.classes)} classes; {env['device']} x{env['device_count']}")

    models = {}
    for spec in args.model:
        name, model, variables, desc = build(spec, args, num_classes)
        key = name if name not in models else f"{name}#{len(models)}"
        models[key] = (model, variables, desc)
        log.info(f"{key}: {desc}")
    config = {k: v for k, v in vars(args).items()}
    config["weights"] = {k: d for k, (_, _, d) in models.items()}

    if args.robustness:
        from vmamba_jax.robustness import select
        from vmamba_jax.robustness import suite

        evaluators = {k: Evaluator(m, v, mesh) for k, (m, v, _) in models.items()}
        t0 = time.time()
        results = suite.run(evaluators, source, select(args.transforms), batch_size=args.batch_size,
                            seed=args.seed, image_size=args.image_size, crop_pct=args.crop_pct,
                            workers=args.workers, progress=not args.no_progress)
        config["seconds"] = time.time() - t0
        if jax.process_index() == 0:
            paths = suite.write(results, args.out, env, config)
            print(open(paths["md"]).read())
        return results

    from vmamba_jax.data import EvalTransform, eval_dataset

    transform = EvalTransform(size=args.image_size, crop_pct=args.crop_pct)
    results, rows = {}, []
    for key, (model, variables, desc) in models.items():
        batches, steps = eval_dataset(source, transform, global_batch=args.batch_size,
                                      process_index=jax.process_index(), process_count=jax.process_count(),
                                      threads=args.workers)
        t0 = time.time()
        res = evaluate(model, variables, batches, steps, mesh=mesh, progress=not args.no_progress, desc=key)
        res["seconds"] = time.time() - t0
        res["weights"] = desc
        results[key] = res
        rows.append([key, res["top1"], res["top5"], res["loss"], res["count"], desc])
        log.info(f"{key}: top-1 {res['top1']:.3f}  top-5 {res['top5']:.3f}  loss {res['loss']:.4f}  "
                 f"({res['count']} images, {res['seconds']:.1f}s)")
    if jax.process_index() == 0:
        write_json(os.path.join(args.out, "eval.json"), {"env": env, "config": config, "results": results})
        body = (f"Data `{args.data}` ({len(source)} images), compute dtype {args.dtype}, eval transform resize "
                f"{int(args.image_size / args.crop_pct)} bicubic + center crop {args.image_size}.\n\n")
        body += markdown_table(["model", "top-1", "top-5", "loss", "images", "weights"], rows, digits=3)
        md = write_markdown(os.path.join(args.out, "eval.md"), "Evaluation", body, env)
        print(open(md).read())
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
