"""Pure classification train and eval steps: `(state, batch) -> (state, metrics)`.

Both are compiled once by `compile_steps` with explicit shardings; the train step donates the
old state so its buffers are reused in place.
"""

import functools

import jax
import jax.numpy as jnp
import optax

from vision_jax.evaluate import classification
from vision_jax.train import parallel
from vision_jax.train.state import TrainState


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float) -> jax.Array:
  """Per-example softmax cross-entropy with optional label smoothing. logits: (B, K)."""
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)  # (B,)


def train_step(state: TrainState, batch: dict, *, label_smoothing: float, ema_decay: float,
               aux_loss_weight: float) -> tuple[TrainState, dict]:
  """One SGD step on a global batch.

  Args:
    state: the train state.
    batch: `image` (B, H, W, C) float32 and `label` (B,) int.
    label_smoothing: mass spread uniformly over all classes.
    ema_decay: decay of the weight EMA (ignored when the state keeps none).
    aux_loss_weight: weight of each auxiliary classifier's loss (features `aux*`, e.g.
      GoogLeNet's two heads in training); the total is what gets minimised.

  Returns:
    The new state and this step's metrics, scalar means over the global batch: `loss` (of the
    main classifier),
    `accuracy` (top-1, on the augmented batch) and the gradient's global norm `grad_norm`.
  """
  dropout_rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params):
    variables = {"params": params, "batch_stats": state.batch_stats}
    (logits, features), updates = state.apply_fn(
        variables, batch["image"], train=True, mutable=["batch_stats"],
        rngs={"dropout": dropout_rng})
    loss = cross_entropy(logits, batch["label"], label_smoothing).mean()
    aux_losses = [cross_entropy(features[k], batch["label"], label_smoothing).mean()
                  for k in sorted(features) if k.startswith("aux")]
    total = loss + aux_loss_weight * sum(aux_losses)
    return total, (loss, logits, updates.get("batch_stats", {}))

  (_, (loss, logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  new_state = state.apply_gradients(grads, batch_stats, ema_decay)
  metrics = {
      "loss": loss,
      "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
      "grad_norm": optax.tree.norm(grads),
  }
  return new_state, metrics


def eval_step(state: TrainState, batch: dict) -> dict:
  """Sums of loss and top-1/top-5 hits over a padded batch (`weight` 0 marks padding)."""
  logits, _ = state.apply_fn(state.eval_variables(), batch["image"], train=False)
  loss = cross_entropy(logits, batch["label"], 0.0)
  return classification.weighted_sums(logits, batch["label"], loss, batch["weight"])


def compile_steps(mesh: jax.sharding.Mesh, state: TrainState, *, label_smoothing: float,
                  ema_decay: float, aux_loss_weight: float):
  """Jits both steps over `mesh`: batches split on `data`, state and metrics replicated.

  Returns:
    `(train_step, eval_step)`, each `(state, batch) -> ...`; train donates its state argument.
  """
  state_sharding = parallel.replicated_tree(mesh, state)
  batch_sharding = parallel.data_sharding(mesh)
  scalar = parallel.replicated(mesh)
  train = jax.jit(
      functools.partial(train_step, label_smoothing=label_smoothing, ema_decay=ema_decay,
                        aux_loss_weight=aux_loss_weight),
      in_shardings=(state_sharding, batch_sharding), out_shardings=(state_sharding, scalar),
      donate_argnums=(0,))
  evaluate = jax.jit(eval_step, in_shardings=(state_sharding, batch_sharding),
                     out_shardings=scalar)
  return train, evaluate
