"""ImageNet-1k, MSVMamba with the official recipe (spec/derivatives.md §2.2-2.4; the Swin/VMamba recipe of both
official branches): 300 epochs, global batch 1024 (official: 8 GPUs x 128), AdamW wd 0.05 with the official VMamba
mask (vmamba_jax/train/optimizer.py), 20 warmup epochs, cosine, lr scaled by batch / 512 (base 5e-4 / min 5e-6;
v3-Base 3e-4 / 3e-6), clip 5, EMA 0.9999, RandAugment m9 mstd0.5, random erasing 0.25, mixup 0.8 / cutmix 1.0,
label smoothing 0.1, 224 px, eval resize 256 -> center crop 224. Drop path comes with the model (0.2 for
Nano/Micro/Tiny/v3-Tiny, 0.4 v3-Small, 0.5 v3-Base).

    python train.py --config configs/msvmamba_imagenet.py:v3_tiny --config.data.root /data/imagenet   # train/ val/
    python train.py --config configs/msvmamba_imagenet.py:nano --config.data.kind arrayrecord \
        --config.data.root /data/in1k_ar

Variants: nano, micro, tiny (master, arXiv v1) and v3_tiny, v3_small, v3_base (branch v2, NeurIPS "MSVMambav3").
Expected (official numbers): top-1 77.3 / 79.8 / 82.8 and 83.0 / 84.1 / 84.4. Not run by this project (no ImageNet).
"""

from vmamba_jax.train.config import default_config

VARIANTS = {
    "nano": "msvmamba_nano", "micro": "msvmamba_micro", "tiny": "msvmamba_tiny",
    "v3_tiny": "msvmamba_v3_tiny", "v3_small": "msvmamba_v3_small", "v3_base": "msvmamba_v3_base",
}


def get_config(variant: str = "v3_tiny"):
    c = default_config()  # the defaults are the official ImageNet recipe (base 5e-4, warmup 5e-7, min 5e-6 per 512)
    variant = variant.lower()
    if variant not in VARIANTS:
        raise ValueError(f"unknown MSVMamba variant {variant!r}; choose one of {sorted(VARIANTS)}")
    c.model.name = VARIANTS[variant]
    if variant == "v3_base":              # msvmambav3_base_224.yaml: BASE_LR 3e-4, MIN_LR 3e-6
        c.optim.base_lr = 3e-4
        c.optim.min_lr = 3e-6
    c.data.kind = "imagefolder"
    c.data.train_split = "train"
    c.data.eval_split = "val"
    c.data.workers = 16
    c.checkpoint.every_steps = 2000
    return c
