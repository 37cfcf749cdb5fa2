"""Pure train and eval steps of any task, and their compilation for each strategy.

`train_step(state, batch) -> (state, metrics)` is one function for both strategies: under
`jit` it sees the global batch and XLA inserts the collectives; under `pmap` it sees one
device's share and averages gradients, BatchNorm statistics and metrics with `lax.pmean`.
Gradient accumulation splits a batch into micro-batches inside the same compiled step, after
the task's batch-level augmentation (mixup, CutMix: `Task.augment_batch`), which pairs examples
across the global batch.
"""

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from vision_jax import sharding, tasks
from vision_jax.train.state import TrainState

# Folded into a step's key for `Task.augment_batch`, apart from dropout's key.
AUGMENT_STREAM = 0x6D6978


def _gradients(state: TrainState, batch_stats, batch: dict, rng: jax.Array, task: tasks.Task):
  """Gradients, new BatchNorm statistics and metrics of one (micro-)batch."""

  def loss_fn(params):
    variables = {"params": params, "batch_stats": batch_stats}
    outputs, updates = state.apply_fn(
        variables, *task.model_inputs(batch), train=True, mutable=["batch_stats"],
        rngs={"dropout": rng})
    total, metrics = task.loss(outputs, batch)
    return total, (metrics, updates.get("batch_stats", {}))

  (_, (metrics, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  return grads, new_stats, metrics


def _micro_batches(batch: dict, steps: int) -> dict:
  """(B, ...) → (steps, B / steps, ...): micro-batch i holds rows i, i + steps, ...

  Strided rather than contiguous so that every device keeps its own rows: the split needs no
  communication.
  """
  return jax.tree.map(
      lambda x: x.reshape(x.shape[0] // steps, steps, *x.shape[1:]).swapaxes(0, 1), batch)


def train_step(state: TrainState, batch: dict, *, task: tasks.Task, ema_decay: float,
               grad_accum_steps: int = 1,
               axis_name: str | None = None) -> tuple[TrainState, dict]:
  """One optimiser step on a batch.

  Args:
    state: the train state.
    batch: the task's features, e.g. `image` (B, H, W, C) float32 and `label` (B,) int: the
      global batch under `jit`, one device's share under `pmap`.
    task: the loss and its metrics (`Task.loss`).
    ema_decay: decay of the weight EMA (ignored when the state keeps none).
    grad_accum_steps: micro-batches the batch is split into; their gradients are averaged, so
      the update equals the whole batch's (BatchNorm sees micro-batches, as on smaller devices).
    axis_name: pmap's device axis, over which gradients, statistics and metrics are averaged;
      None under `jit`. Micro-batches and devices weigh by the `weight` the task's loss reports
      (e.g. counted pixels or tokens), so their average is the mean over the whole batch.

  Returns:
    The new state and this step's metrics, scalar means over the batch: the task's (e.g.
    `loss`, `accuracy` on the augmented batch) and the gradient's global norm `grad_norm`.
  """
  # Under jit one key draws the masks of the whole global batch, and threefry's bits depend on
  # an element's position, not on the sharding: the same masks on any device or process count.
  # pmap draws each device's share from its own key, and accumulation each micro-batch's:
  # with dropout (or other per-example randomness) they equal jit only in distribution.
  rng = jax.random.fold_in(state.rng, state.step)
  # One key on every device (before the device index is folded in): a batch-level draw (mixup's
  # λ, CutMix's box) is the same on any topology.
  batch = task.augment_batch(batch, jax.random.fold_in(rng, AUGMENT_STREAM), axis_name)
  if axis_name is not None:  # Different dropout masks on different devices.
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))

  def weighted(batch_stats, micro_batch, rng):
    """Gradients and metrics times the part's weight (`Task.loss`), and that weight."""
    grads, batch_stats, metrics = _gradients(state, batch_stats, micro_batch, rng, task)
    weight = jnp.asarray(metrics.pop("weight", 1.0), jnp.float32)
    scale = lambda tree: jax.tree.map(lambda x: x * weight, tree)  # noqa: E731
    return (scale(grads), scale(metrics), weight), batch_stats

  if grad_accum_steps == 1:
    sums, batch_stats = weighted(state.batch_stats, batch, rng)
  else:
    def accumulate(carry, micro):
      sums, stats = carry
      index, micro_batch = micro
      part, stats = weighted(stats, micro_batch, jax.random.fold_in(rng, index))
      return (jax.tree.map(jnp.add, sums, part), stats), None

    zeros = jax.eval_shape(weighted, state.batch_stats, batch, rng)[0]
    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), zeros)
    (sums, batch_stats), _ = jax.lax.scan(
        accumulate, (zeros, state.batch_stats),
        (jnp.arange(grad_accum_steps), _micro_batches(batch, grad_accum_steps)))
  if axis_name is not None:
    sums = jax.lax.psum(sums, axis_name)
    batch_stats = jax.lax.pmean(batch_stats, axis_name)
  grad_sum, metric_sum, total = sums
  # Weighted means over micro-batches and devices: the whole batch's means, as under jit.
  grads, metrics = jax.tree.map(lambda x: jnp.where(total > 0, x / total, 0.0),
                                (grad_sum, metric_sum))
  metrics["grad_norm"] = optax.tree.norm(grads)
  return state.apply_gradients(grads, batch_stats, ema_decay), metrics


def eval_step(state: TrainState, batch: dict, *, task: tasks.Task, flip: bool = False,
              raw: bool = False) -> dict:
  """The task's metric sums over a padded batch (`weight` 0 marks padding).

  Args:
    state: the global train state.
    batch: the global eval batch.
    task: the task's eval sums.
    flip: also predict the horizontally mirrored images and average (`Task.merge_flipped`).
    raw: evaluate the live weights even when the state keeps an EMA (by default the EMA's).
  """
  variables = ({"params": state.params, "batch_stats": state.batch_stats} if raw
               else state.eval_variables())
  outputs = state.apply_fn(variables, *task.model_inputs(batch), train=False)
  if flip:
    mirrored = {**batch, "image": batch["image"][:, :, ::-1]}  # (B, H, W, C): W reversed.
    outputs = task.merge_flipped(
        outputs, state.apply_fn(variables, *task.model_inputs(mirrored), train=False))
  return task.eval_sums(outputs, batch)


@dataclasses.dataclass(frozen=True)
class CompiledSteps:
  """The compiled steps of one strategy, and how its state layout maps to global arrays.

  Attributes:
    train: `(train_state, local_batch) -> (train_state, metrics)`; donates its state. Takes
      this process's numpy share of the global batch.
    evaluate: `(state, local_batch) -> sums`, on the global state layout: of the EMA weights
      when the state keeps them.
    evaluate_raw: the same of the live weights (compiled at its first call).
    to_train_layout: global state → the layout `train` takes (identity under `jit`).
    to_global: the train layout → global state (to save or evaluate).
  """
  train: Callable
  evaluate: Callable
  evaluate_raw: Callable
  to_train_layout: Callable
  to_global: Callable


def compile_steps(mesh: jax.sharding.Mesh, state: TrainState, task: tasks.Task, *,
                  strategy: str = "jit", ema_decay: float = 0.0,
                  grad_accum_steps: int = 1, eval_flip: bool = False) -> CompiledSteps:
  """Compiles both steps for `strategy` ("jit" or "pmap") over `mesh`.

  `eval_flip` averages the eval predictions of each image and its mirror (`eval_step`).

  `jit`: state with the shardings of `sharding.state_shardings` (replicated, or FSDP-split),
  batches split over all devices. `pmap`: replicated state in pmap's layout, each device
  averaging with the others over `sharding.PMAP_AXIS` (the model's BatchNorm must use it too).
  """
  state_sharding = sharding.state_shardings(mesh, state)
  batch_sharding = sharding.data_sharding(mesh)
  scalar = sharding.replicated(mesh)
  step = functools.partial(train_step, task=task, ema_decay=ema_decay,
                           grad_accum_steps=grad_accum_steps)
  def compile_eval(raw):
    evaluate = jax.jit(functools.partial(eval_step, task=task, flip=eval_flip, raw=raw),
                       in_shardings=(state_sharding, batch_sharding), out_shardings=scalar)
    return lambda global_state, local_batch: evaluate(
        global_state, sharding.to_global(local_batch, batch_sharding))

  eval_local, eval_raw = compile_eval(False), compile_eval(True)

  if strategy == "jit":
    train = jax.jit(step, in_shardings=(state_sharding, batch_sharding),
                    out_shardings=(state_sharding, scalar), donate_argnums=(0,))
    return CompiledSteps(
        train=lambda s, local_batch: train(s, sharding.to_global(local_batch, batch_sharding)),
        evaluate=eval_local, evaluate_raw=eval_raw, to_train_layout=lambda s: s,
        to_global=lambda s: s)
  if strategy == "pmap":
    train = jax.pmap(functools.partial(step, axis_name=sharding.PMAP_AXIS),
                     axis_name=sharding.PMAP_AXIS, donate_argnums=(0,))

    def train_local(pmap_state, local_batch):
      new_state, metrics = train(pmap_state, sharding.pmap_batch(local_batch))
      return new_state, sharding.first_local_copy(metrics)

    return CompiledSteps(train=train_local, evaluate=eval_local, evaluate_raw=eval_raw,
                         to_train_layout=sharding.to_pmap,
                         to_global=lambda s: sharding.from_pmap(s, mesh))
  raise ValueError(f"Unknown strategy {strategy!r}; valid choices: ['jit', 'pmap']")

