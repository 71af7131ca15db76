"""The jitted train and eval steps, with explicit in/out shardings (no pmap)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from vmamba_jax.data.device_resize import resize_to
from vmamba_jax.data.mixup import mixup_cutmix
from vmamba_jax.evaluation.metrics import masked_sums
from vmamba_jax.train.loss import soft_target_cross_entropy
from vmamba_jax.train.mesh import replicated
from vmamba_jax.train.state import TrainState, ema_update


def _global_norm(tree):
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def make_train_step(model, tx, schedule, cfg, *, num_classes: int, state_sharding, batch_sharding, mesh):
    """Returns jitted `step(state, batch) -> (state, metrics)`; `state` is donated.

    batch: {"image": (B, H, W, 3) f32, "label": (B,) i32, "corrupt": (B,) i32}, B the global batch. Inside: the resize
    to config.data.image_size (when the pipeline augments at a smaller augment_size), mixup/cutmix + label smoothing
    (on device, keyed by the step), forward with drop path, soft-target CE, gradients (accumulated over
    `grad_accum_steps` micro-batches with a scan), clip + AdamW, EMA.
    """
    aug, accum, ema_decay = cfg.aug, int(cfg.optim.grad_accum_steps), float(cfg.ema_decay)
    size = int(cfg.data.image_size)

    def loss_fn(params, images, targets, rng):
        # "shortcut" feeds Res-VMamba's faithful mode (a fresh random projection per call); other models ignore it.
        rngs = {"dropout": rng, "shortcut": jax.random.fold_in(rng, 1)}
        logits = model.apply({"params": params}, images, train=True, rngs=rngs)
        return soft_target_cross_entropy(logits, targets).mean()

    def step(state: TrainState, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        k_mix, k_drop = jax.random.split(rng)
        images, targets = mixup_cutmix(k_mix, resize_to(batch["image"], size), batch["label"], num_classes=num_classes,
                                       mixup_alpha=aug.mixup, cutmix_alpha=aug.cutmix, prob=aug.mixup_prob,
                                       switch_prob=aug.mixup_switch_prob, label_smoothing=aug.label_smoothing)
        if accum == 1:
            loss, grads = jax.value_and_grad(loss_fn)(state.params, images, targets, k_drop)
        else:
            # Micro-batch a takes rows a, a+accum, ...: every device keeps an equal share of every micro-batch.
            def split(x):
                return jnp.moveaxis(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 1, 0)

            def micro(carry, xs):
                i, (im, tg) = xs
                loss_i, g_i = jax.value_and_grad(loss_fn)(state.params, im, tg, jax.random.fold_in(k_drop, i))
                return jax.tree.map(jnp.add, carry, (loss_i, g_i)), None

            zero = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, state.params))
            (loss, grads), _ = jax.lax.scan(micro, zero, (jnp.arange(accum), (split(images), split(targets))))
            loss, grads = jax.tree.map(lambda x: x / accum, (loss, grads))
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = ema_update(state.ema_params, params, ema_decay) if state.ema_params is not None else None
        metrics = {"loss": loss, "grad_norm": _global_norm(grads), "lr": schedule(state.step),
                   "corrupt": jnp.sum(batch["corrupt"])}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema), metrics

    return jax.jit(step, in_shardings=(state_sharding, batch_sharding),
                   out_shardings=(state_sharding, replicated(mesh)), donate_argnums=(0,))


def make_eval_step(model, *, params_sharding, batch_sharding, mesh, image_size: int | None = None):
    """Returns jitted `eval_step(params, batch) -> sums` over the masked batch: top1, top5, loss (plain CE), count.
    With an image_size, batches of another size are resized to it first (config.data.augment_size)."""

    def step(params, batch):
        images = batch["image"] if image_size is None else resize_to(batch["image"], image_size)
        # A fixed "shortcut" key keeps evaluation of faithful Res-VMamba deterministic; other models ignore it.
        logits = model.apply({"params": params}, images, train=False,
                             rngs={"shortcut": jax.random.PRNGKey(0)})
        return masked_sums(logits, batch["label"], batch["mask"])  # the same metric eval.py reports

    return jax.jit(step, in_shardings=(params_sharding, batch_sharding), out_shardings=replicated(mesh))
