"""A LeNet-like convolutional baseline, small enough to train on a CPU."""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vision_jax.models import layers, pooling, precision


class SimpleCNN(nn.Module):
  """Conv-ReLU-pool stages, then a hidden dense layer with dropout, then the classifier.

  The classifier is the dropout and the final Dense (`head`); `pre_logits` is what it reads,
  the hidden layer (before the dropout, so the same with and without a classifier).

  Attributes:
    num_classes: Number of output logits; None builds no classifier (and no dropout).
    features: Output channels of each 3x3 convolution; each is followed by a 2x2 max-pool.
    hidden: Width of the dense layer before the classifier.
    dropout_rate: Dropout on the hidden layer in training (part of the classifier). 0 by
      default so that the baseline is unregularised unless an experiment config asks for it.
    batch_norm: BatchNorm after each convolution (which then has no bias), before the ReLU:
      faster, steadier training (off by default: the course notes' plain CNN).
    bn_axis_name: Device axis over which BatchNorm averages batch statistics (pmap); None
      normalises with each device's local batch.
    dtype: Computation dtype (e.g. jnp.bfloat16 for mixed precision).
    param_dtype: Parameter dtype.
  """

  num_classes: int | None
  features: Sequence[int] = (32, 64)
  hidden: int = 128
  dropout_rate: float = 0.0
  batch_norm: bool = False
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array,
               train: bool = False) -> tuple[jax.Array | None, dict[str, jax.Array]]:
    """Classifies a batch of images.

    Args:
      x: Images, (B, H, W, C).
      train: Enables dropout, which then needs a `'dropout'` rng, and BatchNorm's batch
        statistics (the `'batch_stats'` collection must then be mutable).

    Returns:
      `(logits, features)`: float32 logits (B, num_classes), or None without a classifier, and
      intermediate activations by name: `conv1`, `conv2`, ... after each pool,
      (B, H // 2**i, W // 2**i, features[i - 1]), and `hidden` = `pre_logits`, (B, hidden).
    """
    out = {}
    for i, width in enumerate(self.features):
      x = nn.Conv(
          width, (3, 3), padding="SAME", use_bias=not self.batch_norm, dtype=self.dtype,
          param_dtype=self.param_dtype, name=f"conv{i + 1}")(x)
      if self.batch_norm:
        x = layers.batch_norm(train, self.bn_axis_name, self.dtype, self.param_dtype)(
            name=f"norm{i + 1}")(x)
      x = nn.relu(x)
      x = pooling.max_pool(x, 2)  # (B, H // 2, W // 2, width)
      out[f"conv{i + 1}"] = x
    x = x.reshape(x.shape[0], -1)  # (B, H' * W' * C')
    x = nn.Dense(self.hidden, dtype=self.dtype, param_dtype=self.param_dtype, name="hidden")(x)
    x = nn.relu(x)  # (B, hidden)
    out["hidden"] = out["pre_logits"] = x
    if self.num_classes is None:
      return None, out
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="head")(x)
    # Softmax and the loss run in float32 (float64 in float64 mode), even under bfloat16.
    return x.astype(precision.output_dtype(self.dtype)), out
