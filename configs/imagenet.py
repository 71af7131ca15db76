"""ImageNet-1k, VMamba-T/S/B with the official recipe (spec/vmamba.md §5.1): 300 epochs, global batch 1024, AdamW
lr 1e-3 (5e-4 x 1024/512), 20 warmup epochs, cosine to 1e-5, wd 0.05 with the official mask, clip 5, EMA 0.9999,
RandAugment m9 mstd0.5, random erasing 0.25, mixup 0.8 / cutmix 1.0 (switch 0.5), label smoothing 0.1, drop path
0.2 / 0.3 / 0.6; eval resize 256 -> center crop 224.

    python train.py --config configs/imagenet.py:T --config.data.root /data/imagenet       # ImageFolder train/ val/
    python train.py --config configs/imagenet.py:S --config.data.kind arrayrecord --config.data.root /data/in1k_ar
    python -m vmamba_jax.data.prepare /data/imagenet /data/in1k_ar                         # the ArrayRecord fast path

Expected (official numbers for these checkpoints): top-1 82.6 (T, vmamba_tiny_s1l8), 83.6 (S, vmamba_small_s2l15),
83.9 (B, vmamba_base_s2l15), with EMA evaluated beside the raw weights. Not run by this project (no ImageNet here).
"""

from vmamba_jax.train.config import default_config

VARIANTS = {"T": "vmamba_tiny_s1l8", "S": "vmamba_small_s2l15", "B": "vmamba_base_s2l15"}


def get_config(variant: str = "T"):
    c = default_config()  # the defaults are the official ImageNet recipe
    c.model.name = VARIANTS[variant.upper()]
    c.data.kind = "imagefolder"
    c.data.train_split = "train"
    c.data.eval_split = "val"
    c.data.workers = 16
    c.checkpoint.every_steps = 2000
    return c
