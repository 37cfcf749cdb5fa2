"""A fully connected baseline: the images are flattened, so it ignores spatial structure."""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vision_jax.models import precision


class MLP(nn.Module):
  """Multi-layer perceptron classifier.

  The classifier is the final Dense (`head`); `pre_logits` is what it reads, the last hidden
  layer (the flattened image without hidden layers).

  Attributes:
    num_classes: Number of output logits; None builds no classifier.
    hidden_sizes: Width of each hidden layer, in order.
    dtype: Computation dtype (e.g. jnp.bfloat16 for mixed precision).
    param_dtype: Parameter dtype.
  """

  num_classes: int | None
  hidden_sizes: Sequence[int] = (512, 256)
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array,
               train: bool = False) -> tuple[jax.Array | None, dict[str, jax.Array]]:
    """Classifies a batch of images.

    Args:
      x: Images, (B, H, W, C).
      train: Unused; kept so that every model has the same signature.

    Returns:
      `(logits, features)`: float32 logits (B, num_classes), or None without a classifier, and
      the hidden activations by name (`hidden1`, `hidden2`, ...), each (B, width), and
      `pre_logits` (B, D).
    """
    del train  # No dropout or normalisation.
    features = {}
    x = x.reshape(x.shape[0], -1)  # (B, H * W * C)
    for i, width in enumerate(self.hidden_sizes):
      x = nn.Dense(width, dtype=self.dtype, param_dtype=self.param_dtype, name=f"hidden{i + 1}")(x)
      x = nn.relu(x)  # (B, width)
      features[f"hidden{i + 1}"] = x
    features["pre_logits"] = x  # (B, D)
    if self.num_classes is None:
      return None, features
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="head")(x)
    # Softmax and the loss run in float32 (float64 in float64 mode), even under bfloat16.
    return x.astype(precision.output_dtype(self.dtype)), features
