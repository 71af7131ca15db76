"""Res-VMamba-S on CNFOOD-241 (241 classes, ImageFolder <root>/train/<class>/*.jpg, <root>/val/<class>/*.jpg),
the official recipe (spec/derivatives.md §1.3), from scratch.

    python train.py --config configs/resvmamba_cnfood241.py --config.data.root /data/cnfood241

Recipe: 224 px (RandomResizedCrop bicubic from the 600x600 sources), RandAugment m9 mstd0.5, random erasing 0.25,
mixup 0.8 / cutmix 1.0 (switch 0.5), label smoothing 0.1; AdamW (0.9, 0.999, eps 1e-8) wd 0.05 with no decay on 1-D
params, biases, A_logs and Ds; cosine per step, 300 epochs with 20 warmup; base lr 5e-4 / warmup 5e-7 / min 5e-6
scaled by batch / 512 (the paper's batch 128 on one GPU -> 1.25e-4); clip 5; EMA 0.9999; seed 0; drop path 0.3 (with
the model); eval resize 256 -> center crop 224.

Model: `resvmamba_small` = VMamba-S v0 + the stage shortcut, LEARNED (the default, faithful=False). The official code's
shortcut is a fresh random projection on every call (`faithful=True`); that mode needs rngs={"shortcut": key} in every
apply, which train.py's steps do not pass, so it is not a train.py recipe.

Head: 1000-way as in the official code (its build_dataset returns 1000 classes for DATASET='imagenet'; labels are
0..240); pass --config.model.num_classes 241 for a 241-way head. Expected (paper, without pretrained weights): 79.54%
top-1. Not run by this project (no CNFOOD-241 here).
"""

from vmamba_jax.train.config import default_config


def get_config():
    c = default_config()
    c.model.name = "resvmamba_small"
    c.model.num_classes = 1000
    c.data.kind = "imagefolder"
    c.data.train_split = "train"
    c.data.eval_split = "val"
    c.data.workers = 16
    c.global_batch = 128              # the paper's single-GPU batch; lrs scale by 128 / 512
    c.optim.exempt_names = ("A_logs", "Ds")
    c.checkpoint.every_steps = 2000
    return c
