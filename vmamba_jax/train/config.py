"""`default_config()`: every training knob with the official ImageNet recipe (spec/vmamba.md §5.1) as defaults.

Config files in configs/ start from this and override what differs; each field is documented here once.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.epochs = 300.0                # float: fractions of an epoch are allowed
    c.global_batch = 1024          # summed over all devices and processes (official: 8 GPUs x 128)
    c.eval_batch = 256
    c.eval_every_epochs = 1.0
    c.log_every_steps = 50
    c.progress_bar = True
    c.tensorboard = True

    c.model = ml_collections.ConfigDict()
    c.model.name = "vmamba_tiny_s1l8"                    # any vmamba_jax.list_models() name
    c.model.kwargs = ml_collections.ConfigDict()        # overrides in the official VSSM keyword names
    c.model.num_classes = config_dict.placeholder(int)  # None: the number of classes in the data
    c.dtype = "bfloat16"                                # compute dtype; params, scan math and norms stay fp32
    c.remat = False                                     # rematerialise each block (VSSM use_checkpoint)
    # Each stage's blocks as one nn.scan over stacked parameters (VSSLayer.scan_blocks): XLA compiles one block per
    # stage. Checkpoints then hold the stacked layout; official weights convert into it.
    c.scan_blocks = False
    c.scan_implementation = config_dict.placeholder(str)  # None = auto (best available on the backend)
    # JAX's persistent compilation cache: a restarted run (preemption, a crash) loads its compiled train and eval
    # steps instead of compiling them again (minutes for VMamba-S/B on a GPU). "" turns it off;
    # JAX_COMPILATION_CACHE_DIR, when set, wins.
    c.compilation_cache_dir = "~/.cache/vmamba_jax/xla"

    c.data = ml_collections.ConfigDict()
    c.data.kind = "imagefolder"        # digits | imagefolder | arrayrecord | tfds
    c.data.root = config_dict.placeholder(str)   # imagefolder: <root>/<split>/<class>/*; arrayrecord: shard dir
    c.data.train_split = "train"
    c.data.eval_split = "val"
    c.data.tfds_name = config_dict.placeholder(str)
    c.data.image_size = 224
    # The side the host pipeline crops and augments at when smaller than image_size: the train and eval steps then
    # upsample on the device (bicubic). For small images whose Grain workers bound training (CIFAR-10 at 64 px).
    c.data.augment_size = config_dict.placeholder(int)
    c.data.mean = (0.485, 0.456, 0.406)
    c.data.std = (0.229, 0.224, 0.225)
    c.data.workers = 8                 # Grain worker processes per host (0: in-process threads only)
    c.data.eval_workers = 8            # eval runs every epoch: 0 (threads) avoids restarting workers on small sets
    # Keep the decoded eval batches on the devices after the first evaluation when they take at most this many MiB
    # (float32): small eval sets are then decoded once, not every epoch (CIFAR-10's 10k test images: ~120 MiB, 4.2 s
    # to decode on 2 CPU cores; the H200 run that decoded them every epoch took 11.5 s an epoch for 4.3 s of train
    # steps). 0 turns it off; ImageNet's val (~29 GiB) never qualifies.
    c.data.cache_eval_mib = 1024
    # Decode the whole train set once into host memory (uint8) when it takes at most this many MiB and its images
    # share one shape, instead of in the Grain workers every epoch (CIFAR-10: 150 MiB). 0: off.
    c.data.cache_train_mib = 0
    c.data.eval_ahead = True           # decode the eval set and compile the eval step in a thread while training starts

    c.aug = ml_collections.ConfigDict()
    c.aug.rrc_scale = (0.08, 1.0)      # RandomResizedCrop scale; None: resize + padded random crop
    c.aug.crop_padding = 0
    c.aug.hflip = 0.5
    c.aug.randaugment = "rand-m9-mstd0.5-inc1"
    c.aug.reprob = 0.25
    c.aug.crop_pct = 224 / 256         # eval: resize to size / crop_pct, center crop
    c.aug.mixup = 0.8
    c.aug.cutmix = 1.0
    c.aug.mixup_prob = 1.0
    c.aug.mixup_switch_prob = 0.5
    c.aug.label_smoothing = 0.1

    c.optim = ml_collections.ConfigDict()
    c.optim.base_lr = 5e-4             # all three are scaled by global_batch / lr_batch_denominator
    c.optim.warmup_lr = 5e-7
    c.optim.min_lr = 5e-6
    c.optim.lr_batch_denominator = 512
    c.optim.warmup_epochs = 20.0
    c.optim.weight_decay = 0.05
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.clip_grad = 5.0
    c.optim.exempt_ssm = False         # True: no weight decay on any SSM param (see train/optimizer.py)
    c.optim.exempt_names = ()          # extra leaf names without weight decay
    c.optim.grad_accum_steps = 1
    c.ema_decay = 0.9999               # 0 disables the EMA

    c.mesh = ml_collections.ConfigDict()
    c.mesh.fsdp = 1                    # >1: params + optimizer state sharded over this many devices

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 1000    # besides the evaluations' (below)
    # Save with every Nth evaluation (the best checkpoint is picked among these); the last step and a SIGTERM always
    # save. 1 for long epochs; a short run whose evaluations come every few seconds saves less often.
    c.checkpoint.every_evals = 1
    c.checkpoint.keep = 2
    c.checkpoint.keep_best = 1
    c.checkpoint.async_save = True

    c.distributed = ml_collections.ConfigDict()   # multi-host without auto-detection (TPU/Slurm detect themselves)
    c.distributed.coordinator_address = config_dict.placeholder(str)
    c.distributed.num_processes = 1
    c.distributed.process_id = 0
    return c
