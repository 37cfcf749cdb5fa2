"""Which pixels made the classifier say what it said: input-gradient saliency and Grad-CAM.

Both explain one class logit per image (the predicted class unless told otherwise), on a batch,
in eval mode (BatchNorm uses its running statistics, so the images do not affect each other and
the gradient of the summed logits is each image's own gradient).

Saliency (Simonyan et al., 2014): |d logit_c / d x|, the largest over colour channels.
Grad-CAM (Selvaraju et al., 2017): for the activations A (H', W', K) of a chosen layer,
  weights w_k = mean over positions of d logit_c / d A_k,  map = ReLU(sum_k w_k A_k),
upsampled bilinearly to the input size and scaled to [0, 1] per image.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from vision_jax import errors
from vision_jax.viz import activations


def _classes(logits: jax.Array, class_index: int | None) -> jax.Array:
  """(B,) the class to explain: `class_index` for all, or each image's prediction."""
  if class_index is None:
    return jnp.argmax(logits, axis=-1)
  return jnp.full(logits.shape[:1], class_index)


def saliency(model: nn.Module, variables: dict, images: jax.Array,
             class_index: int | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Input-gradient saliency maps.

  Args:
    model: a registry model.
    variables: its variables.
    images: (B, H, W, C) preprocessed.
    class_index: the class to explain; None explains each image's predicted class.

  Returns:
    `(maps, classes, logits)`: (B, H, W) float32 >= 0, (B,) explained classes, (B, N) logits.
  """
  logits, _ = model.apply(variables, images, train=False)
  classes = _classes(logits, class_index)
  one_hot = jax.nn.one_hot(classes, logits.shape[-1])  # (B, N)

  def chosen_logits(x):
    return jnp.sum(model.apply(variables, x, train=False)[0] * one_hot)

  grads = jax.grad(chosen_logits)(images)  # (B, H, W, C)
  return jnp.abs(grads).max(axis=-1), classes, logits


def grad_cam(model: nn.Module, variables: dict, images: jax.Array, layer: str | None = None,
             class_index: int | None = None) -> tuple[jax.Array, jax.Array, jax.Array, str]:
  """Grad-CAM maps for one layer.

  Args:
    model: a registry model.
    variables: its variables.
    images: (B, H, W, C) preprocessed.
    layer: a module output ("conv2/__call__") or a stage that is one ("stage3"); see
      `activations`. None takes the deepest spatial module output, the usual choice.
    class_index: the class to explain; None explains each image's predicted class.

  Returns:
    `(maps, classes, logits, layer)`: (B, H, W) float32 in [0, 1], (B,) explained classes,
    (B, N) logits, and the layer used.

  Raises:
    errors.UserError: for a layer that is unknown or not a (B, H, W, C) module output, listing the
      valid choices.
  """
  tr = activations.trace(model, variables, images)
  valid = tr.perturbable_names()
  if layer is None:
    if not valid:
      raise errors.UserError("The model has no (B, H, W, C) module output to compute Grad-CAM on.")
    layer = valid[-1]
  if layer in tr.features and layer not in valid:
    raise errors.UserError(
        f"Stage {layer!r} is computed outside any submodule (e.g. by a pooling function), so "
        f"there is nothing to take its gradient at; use a module output; valid choices: {valid}")
  a = tr.get(layer, valid).astype(jnp.float32)  # (B, H', W', K)
  module = tr.aliases.get(layer, layer)
  logits, vjp = jax.vjp(
      lambda delta: activations.perturbed_apply(model, variables, images, module, delta),
      jnp.zeros(a.shape, tr.modules[module].dtype))
  classes = _classes(logits, class_index)
  (grads,) = vjp(jax.nn.one_hot(classes, logits.shape[-1], dtype=logits.dtype))  # (B, H', W', K)
  weights = grads.astype(jnp.float32).mean(axis=(1, 2))  # (B, K)
  cam = jax.nn.relu(jnp.einsum("bhwk,bk->bhw", a, weights))  # (B, H', W')
  b, h, w = images.shape[:3]
  cam = jax.image.resize(cam, (b, h, w), method="bilinear")  # (B, H, W)
  cam = cam / jnp.maximum(cam.max(axis=(1, 2), keepdims=True), 1e-12)
  return cam, classes, logits, layer
