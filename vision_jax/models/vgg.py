"""VGG (Simonyan & Zisserman 2014, "Very Deep Convolutional Networks"), torchvision's layout.

Five stages of 3x3 convolutions (64, 128, 256, 512, 512 filters), each followed by a 2x2 max-pool;
then an adaptive average pool to 7x7 and a classifier 4096 -> 4096 -> classes with dropout 0.5.
Configurations A, B, D, E of the paper are VGG-11/13/16/19; the `_bn` variants put a BatchNorm
between each convolution and its ReLU (the convolutions keep their bias, as in torchvision).
Parameter counts at 1000 classes equal torchvision's: VGG-11 132,863,336, VGG-13 133,047,848,
VGG-16 138,357,544, VGG-19 143,667,240; BatchNorm adds 2 per conv filter (VGG-16-BN 138,365,992).

Small inputs: torchvision's VGG needs at least 32 px; here a map smaller than 2 px is max-pooled
to 1 px instead of to nothing, and the adaptive pool handles maps smaller than 7x7, so any size
works and sizes torchvision accepts give the same result.
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vision_jax.models import layers, pooling, precision


def _max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2/2 max-pool (floor mode, as torchvision); a side of 1 px stays 1 px."""
  h, w = x.shape[1:3]
  if h < 2 or w < 2:
    x = jnp.pad(x, ((0, 0), (0, max(0, 2 - h)), (0, max(0, 2 - w)), (0, 0)),
                constant_values=-jnp.inf)
  return pooling.max_pool(x, 2)


class VGG(nn.Module):
  """VGG classifier.

  The classifier is torchvision's: fc6, fc7 and the final Dense (`head`) with their dropout;
  `pre_logits` is what it reads, the pooled map flattened. With `fc_in_trunk`, fc6 and fc7 (and
  the dropout between them) are part of the trunk instead (timm's split), the classifier is the
  dropout and `head`, and `pre_logits` is fc7's output.

  Attributes:
    num_classes: Number of output logits; None builds no classifier.
    stage_sizes: Number of 3x3 convolutions in each stage; a 2x2 max-pool ends every stage.
    widths: Filters of the convolutions of each stage.
    batch_norm: BatchNorm after every convolution (torchvision's `vgg*_bn`).
    hidden: Width of the two hidden dense layers.
    pooled_size: Side of the adaptive average pool before the classifier.
    dropout_rate: Dropout after each hidden dense layer, in training.
    fc_in_trunk: Keep fc6 and fc7 without a classifier (`num_classes=None`), and read
      `pre_logits` from fc7 (B, hidden), e.g. for R-CNN's region features. Models with a
      classifier have the same parameters either way.
    bn_axis_name: Device axis over which BatchNorm averages batch statistics; None normalises
      with each device's local batch.
    dtype: Computation dtype (e.g. jnp.bfloat16 for mixed precision).
    param_dtype: Parameter dtype.
  """

  num_classes: int | None
  stage_sizes: Sequence[int]
  widths: Sequence[int] = (64, 128, 256, 512, 512)
  batch_norm: bool = False
  hidden: int = 4096
  pooled_size: int = 7
  dropout_rate: float = 0.5
  fc_in_trunk: bool = False
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array,
               train: bool = False) -> tuple[jax.Array | None, dict[str, jax.Array]]:
    """Classifies a batch of images.

    Args:
      x: Images, (B, H, W, C).
      train: Enables dropout (which then needs a `'dropout'` rng) and, with `batch_norm`,
        normalises with batch statistics and updates the running averages in the mutable
        `'batch_stats'` collection.

    Returns:
      `(logits, features)`: float32 logits (B, num_classes), or None without a classifier, and
      activations by name: `stage1` .. `stage5` after each max-pool
      ((B, H / 2**i, W / 2**i, widths[i - 1]); stage5 is (B, 7, 7, 512) at 224x224), `pooled`
      (B, 7, 7, 512), `fc6`, `fc7` (B, hidden) after their ReLU (where they are built) and
      `pre_logits`: (B, 49 * 512) flattened `pooled`, or (B, hidden) `fc7` with `fc_in_trunk`.
    """
    # torchvision's VGG: convolutions keep their bias, also before a BatchNorm.
    conv = layers.conv(self.dtype, self.param_dtype, kernel_size=(3, 3), padding=((1, 1), (1, 1)))
    norm = layers.batch_norm(train, self.bn_axis_name, self.dtype, self.param_dtype)
    dense = layers.classifier_dense(self.dtype, self.param_dtype)

    out = {}
    for i, (num_convs, width) in enumerate(zip(self.stage_sizes, self.widths, strict=True)):
      for j in range(num_convs):
        name = f"stage{i + 1}_conv{j + 1}"
        x = conv(width, name=name)(x)
        if self.batch_norm:
          x = norm(name=f"{name}_bn")(x)
        x = nn.relu(x)
      x = _max_pool_2x2(x)  # (B, H / 2**(i+1), W / 2**(i+1), width)
      out[f"stage{i + 1}"] = x

    x = pooling.adaptive_avg_pool(x, (self.pooled_size, self.pooled_size))  # (B, 7, 7, C)
    out["pooled"] = x
    # NHWC flattening: porting torchvision's fc6 weight needs its inputs permuted from (C, H, W).
    x = x.reshape(x.shape[0], -1)  # (B, 49 C)

    def fc(x):  # fc6 -> ReLU -> dropout -> fc7 -> ReLU.
      x = nn.relu(dense(self.hidden, name="fc6")(x))  # (B, hidden)
      out["fc6"] = x
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      out["fc7"] = x = nn.relu(dense(self.hidden, name="fc7")(x))  # (B, hidden)
      return x

    if self.fc_in_trunk:
      x = fc(x)
    out["pre_logits"] = x  # (B, 49 C), or (B, hidden) with fc_in_trunk
    if self.num_classes is None:
      return None, out
    if not self.fc_in_trunk:
      x = fc(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = dense(self.num_classes, name="head")(x)
    # Softmax and the loss run in float32 (float64 in float64 mode), even under bfloat16.
    return x.astype(precision.output_dtype(self.dtype)), out


VGG11 = functools.partial(VGG, stage_sizes=(1, 1, 2, 2, 2))
VGG13 = functools.partial(VGG, stage_sizes=(2, 2, 2, 2, 2))
VGG16 = functools.partial(VGG, stage_sizes=(2, 2, 3, 3, 3))
VGG19 = functools.partial(VGG, stage_sizes=(2, 2, 4, 4, 4))
VGG11BN = functools.partial(VGG11, batch_norm=True)
VGG13BN = functools.partial(VGG13, batch_norm=True)
VGG16BN = functools.partial(VGG16, batch_norm=True)
VGG19BN = functools.partial(VGG19, batch_norm=True)
