"""CNFOOD-241-style fine-grained ImageFolder with the Res-VMamba recipe (spec/derivatives.md §1.3), from scratch.

    python train.py --config configs/cnfood241_resvmamba.py --config.data.root /data/cnfood241   # train/ val/

Recipe: 224 px (RandomResizedCrop bicubic from 600x600 sources), RandAugment m9 mstd0.5, random erasing 0.25, mixup
0.8 / cutmix 1.0 (switch 0.5), label smoothing 0.1; AdamW (0.9, 0.999, eps 1e-8) wd 0.05 with no decay on 1-D params,
biases, A_logs and Ds; cosine per step, 300 epochs with 20 warmup; base lr 5e-4 / warmup 5e-7 / min 5e-6 scaled by
batch/512 (batch 128 -> 1.25e-4); clip 5; EMA 0.9999; drop path 0.3; a 1000-way head as in the official code (labels
0..240). The backbone is VMamba-T here: the Res-VMamba residual-learning variant is not in this repository's model
zoo. Expected (paper, without pretrained weights): 79.54% top-1.
"""

from vmamba_jax.train.config import default_config


def get_config():
    c = default_config()
    c.model.name = "vmamba_tiny_s1l8"
    c.model.kwargs.drop_path_rate = 0.3
    c.model.num_classes = 1000        # official: build_dataset returns 1000 classes for DATASET='imagenet'
    c.data.kind = "imagefolder"
    c.data.train_split = "train"
    c.data.eval_split = "val"
    c.data.workers = 16
    c.global_batch = 128
    c.optim.exempt_names = ("A_logs", "Ds")   # Res-VMamba: no weight decay on A_logs or Ds
    c.checkpoint.every_steps = 2000
    return c
