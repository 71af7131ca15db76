"""AdamW with the official VMamba weight-decay mask, warmup + per-step cosine schedule, global-norm clipping.

Official rule (`classification/utils/optimizer.py`, spec §5.1): no decay for params with ndim == 1 or a name ending in
".bias" (plus pos_embed, which no released model has). With our names (LayerNorm 'scale'/'bias', Dense/Conv
'kernel'/'bias', raw SS2D params) that is exactly "decay iff leaf.ndim >= 2": the one 2-D bias, `dt_projs_bias`
(K, D), is named without ".bias" officially and IS decayed; `A_logs` (K*D, N) is decayed; `Ds` (K*D,) is not.

`exempt_ssm=True` additionally exempts every SSM parameter (A_logs, Ds, dt_projs_bias, dt_projs_weight,
x_proj_weight). This is off by default because the released checkpoints were trained with the official mask. It is
the option to reach for when fine-tuning at high weight decay or for long schedules: A_logs and dt_projs_bias are
log-parameterised timescales, so decaying them toward 0 pulls every channel toward A = -1 and softplus(0) = 0.69
steps (a bias toward one timescale, not toward "small weights"). Res-VMamba's fine-grained recipe lists "no weight
decay on A_logs or Ds" (spec/derivatives.md §1.3); that exact variant is `exempt_names=("A_logs", "Ds")`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

SSM_PARAM_NAMES = ("A_logs", "Ds", "dt_projs_bias", "dt_projs_weight", "x_proj_weight")


def _leaf_name(path) -> str:
    last = path[-1]
    return str(getattr(last, "key", getattr(last, "name", last)))


def weight_decay_mask(params, exempt_ssm: bool = False, exempt_names: tuple[str, ...] = ()):
    """Pytree of bools like `params`: True where AdamW applies weight decay."""
    exempt = set(exempt_names) | (set(SSM_PARAM_NAMES) if exempt_ssm else set())
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: bool(len(leaf.shape) >= 2 and _leaf_name(path) not in exempt), params)


def warmup_cosine(base_lr: float, warmup_lr: float, min_lr: float, warmup_steps: int, total_steps: int):
    """timm CosineLRScheduler(t_in_epochs=False, warmup_prefix=True) stepped per iteration: linear warmup from
    warmup_lr to base_lr over warmup_steps, then cosine from base_lr to min_lr over the remaining steps."""
    decay_steps = max(1, total_steps - warmup_steps)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = warmup_lr + step * (base_lr - warmup_lr) / max(1, warmup_steps)
        t = jnp.clip((step - warmup_steps) / decay_steps, 0.0, 1.0)
        cos = min_lr + 0.5 * (base_lr - min_lr) * (1.0 + jnp.cos(math.pi * t))
        return jnp.where(step < warmup_steps, warm, cos)

    return schedule


def scaled_learning_rates(optim_cfg, global_batch: int) -> tuple[float, float, float]:
    """Linear scaling rule: every learning rate times global_batch / lr_batch_denominator (512 officially)."""
    s = global_batch / optim_cfg.lr_batch_denominator
    return optim_cfg.base_lr * s, optim_cfg.warmup_lr * s, optim_cfg.min_lr * s


def make_optimizer(optim_cfg, params, *, global_batch: int, steps_per_epoch: int, total_steps: int):
    """Returns (optax.GradientTransformation, schedule). Clipping happens before AdamW, as officially."""
    base, warm, low = scaled_learning_rates(optim_cfg, global_batch)
    schedule = warmup_cosine(base, warm, low, int(round(optim_cfg.warmup_epochs * steps_per_epoch)), total_steps)
    mask = weight_decay_mask(params, optim_cfg.exempt_ssm, tuple(optim_cfg.get("exempt_names", ())))
    tx = optax.chain(
        optax.clip_by_global_norm(optim_cfg.clip_grad) if optim_cfg.clip_grad else optax.identity(),
        optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
                    weight_decay=optim_cfg.weight_decay, mask=mask),
    )
    return tx, schedule
