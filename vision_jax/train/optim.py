"""Optimiser and learning-rate schedule from the `optim` config section."""

import jax
import ml_collections
import optax


def learning_rate_schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to `learning_rate`, then cosine decay to 0 or constant."""
  warmup = min(config.warmup_steps, max(total_steps - 1, 0))
  if config.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=config.learning_rate, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=0.0)
  return optax.join_schedules(
      [optax.linear_schedule(0.0, config.learning_rate, max(warmup, 1)),
       optax.constant_schedule(config.learning_rate)], [warmup])


def _decay_mask(params):
  """Weight decay on kernels only: biases and norm scales are left alone (common practice)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def make_optimizer(config: ml_collections.ConfigDict,
                   total_steps: int) -> optax.GradientTransformation:
  """Builds the optimiser chain: [clip] → SGD+momentum or AdamW, with the schedule.

  Args:
    config: the `optim` config section.
    total_steps: training length, for the schedule.
  """
  schedule = learning_rate_schedule(config, total_steps)
  parts = []
  if config.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  if config.name == "sgd":
    parts += [optax.add_decayed_weights(config.weight_decay, mask=_decay_mask),
              optax.sgd(schedule, momentum=config.momentum, nesterov=config.nesterov)]
  else:
    parts.append(optax.adamw(schedule, weight_decay=config.weight_decay, mask=_decay_mask))
  return optax.chain(*parts)
