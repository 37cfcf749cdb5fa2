"""The train state: one pytree holding everything a training step reads and writes."""

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from vision_jax import sharding


class TrainState(flax.struct.PyTreeNode):
  """Everything that changes during training, and nothing else (all of it is checkpointed).

  Attributes:
    step: optimiser steps taken.
    params: model parameters (float32).
    batch_stats: BatchNorm running statistics (empty dict for models without BN).
    opt_state: optimiser state.
    rng: the run's base key; each step folds in its step number, so nothing is consumed.
    ema_params: exponential moving average of `params`, or None when disabled.
    apply_fn: `model.apply` (static: not part of the pytree).
    tx: the optimiser (static).
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: optax.OptState
  rng: jax.Array
  ema_params: Any = None
  apply_fn: Callable = flax.struct.field(pytree_node=False, default=None)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False, default=None)

  def apply_gradients(self, grads, batch_stats, ema_decay: float) -> "TrainState":
    """One optimiser update; also refreshes BN statistics and the weight EMA."""
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    params = optax.apply_updates(self.params, updates)
    ema = self.ema_params
    if ema is not None:
      ema = optax.incremental_update(params, ema, step_size=1.0 - ema_decay)
    return self.replace(step=self.step + 1, params=params, batch_stats=batch_stats,
                        opt_state=opt_state, ema_params=ema)

  def eval_variables(self) -> dict:
    """Variables to evaluate with: the EMA weights when kept, else the live ones."""
    params = self.params if self.ema_params is None else self.ema_params
    return {"params": params, "batch_stats": self.batch_stats}


def example_inputs(image_shape: tuple[int, ...], init_inputs: tuple | None = None) -> tuple:
  """What `model.init` is traced with: the task's `init_inputs`, else one zero image."""
  return init_inputs or (jnp.zeros((1, *image_shape), jnp.float32),)


def train_state_initializer(model: nn.Module, tx: optax.GradientTransformation,
                            image_shape: tuple[int, ...], mesh: jax.sharding.Mesh,
                            use_ema: bool, init_inputs: tuple | None = None
                            ) -> tuple[Callable[[jax.Array], TrainState], TrainState]:
  """The state's initialiser and its abstract value, before anything is allocated.

  Shapes come from `jax.eval_shape`, so a run can compare them with a checkpoint, or restore
  onto them, without initialising; the initialiser is jitted with explicit output shardings, so
  a fresh state is allocated once, in place, on the devices (no host round trip).

  Args:
    model: a registry model (`__call__(x, train) -> (logits, features)`).
    tx: the optimiser.
    image_shape: (H, W, C) of one input image.
    mesh: the device mesh.
    use_ema: keep an exponential moving average of the weights.
    init_inputs: example inputs `model.init` is traced with; default one zero image.

  Returns:
    `(init, abstract)`: `init(rng)` creates the state laid out as `sharding.state_shardings`
    says; `abstract` is the same state as `jax.ShapeDtypeStruct`s carrying those shardings.
  """
  def init(rng):
    init_rng, state_rng = jax.random.split(rng)
    variables = model.init(init_rng, *example_inputs(image_shape, init_inputs), train=False)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params,
        batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params), rng=state_rng,
        ema_params=params if use_ema else None, apply_fn=model.apply, tx=tx)

  shapes = jax.eval_shape(init, jax.random.key(0))
  shardings = sharding.state_shardings(mesh, shapes)
  abstract = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)
  return jax.jit(init, out_shardings=shardings), abstract


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
                       image_shape: tuple[int, ...], mesh: jax.sharding.Mesh,
                       use_ema: bool, init_inputs: tuple | None = None) -> TrainState:
  """Initialises the state directly on the devices (see `train_state_initializer`).

  Args:
    model: a registry model (`__call__(x, train) -> (logits, features)`).
    tx: the optimiser.
    rng: base key of the run.
    image_shape: (H, W, C) of one input image.
    mesh: the device mesh.
    use_ema: keep an exponential moving average of the weights.
    init_inputs: example inputs `model.init` is traced with; default one zero image.
  """
  init, _ = train_state_initializer(model, tx, image_shape, mesh, use_ema, init_inputs)
  return init(rng)

