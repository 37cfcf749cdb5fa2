"""AlexNet (Krizhevsky et al. 2012) as torchvision builds it, and ZFNet (Zeiler & Fergus 2013).

Both are five convolutions with ReLU, three of them followed by a 3x3/2 max-pool, then an
adaptive average pool to 6x6 and a classifier of dropout -> 4096 -> dropout -> 4096 -> classes.
They differ only in the convolutions, so one `AlexNet` class takes the layer spec as data:

- AlexNet (torchvision's single-GPU "one weird trick" version, Krizhevsky 2014): 64, 192, 384,
  256, 256 filters, first layer 11x11/4. 61,100,840 parameters at 1000 classes.
- ZFNet (Zeiler & Fergus 2013, Fig. 3): 96 filters of 7x7/2 first, then 5x5/2 256, 3x3 384, 384,
  256. Padding follows the paper's feature-map sizes at 224x224 (110, 55, 26, 13, 13, 13, 6),
  which needs ceil-mode pools. 62,357,608 parameters at 1000 classes. The paper's local contrast
  normalisation after the first two layers is left out, as torchvision leaves out AlexNet's LRN.

Small inputs: torchvision's AlexNet needs at least 63 px. Here a convolution or max-pool whose
window does not fit in the (padded) feature map gets extra padding on the bottom/right, up to
one window (zeros for convolutions, -inf for pools), and the adaptive average pool also works on
maps smaller than 6x6 (bins then overlap, as in PyTorch). Wherever torchvision accepts an input,
shapes and values are unchanged; any size from 1 px up works.

PyTorch-compatible pooling comes from `pooling`, shared with VGG and GoogLeNet.
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vision_jax.models import layers, pooling, precision

# One convolution: (filters, kernel size, stride, padding, followed by a 3x3/2 max-pool).
ConvSpec = tuple[int, int, int, int, bool]

ALEXNET_CONVS: tuple[ConvSpec, ...] = (
    (64, 11, 4, 2, True), (192, 5, 1, 2, True),
    (384, 3, 1, 1, False), (256, 3, 1, 1, False), (256, 3, 1, 1, True))
ZFNET_CONVS: tuple[ConvSpec, ...] = (
    (96, 7, 2, 1, True), (256, 5, 2, 0, True),
    (384, 3, 1, 1, False), (384, 3, 1, 1, False), (256, 3, 1, 1, True))


def conv_padding(size: int, kernel: int, padding: int) -> tuple[int, int]:
  """Symmetric padding, plus zeros on the bottom/right if the map is smaller than the kernel."""
  return padding, padding + max(0, kernel - size - 2 * padding)


class AlexNet(nn.Module):
  """AlexNet-style classifier: convolutions from `convs`, adaptive pool, three dense layers.

  The classifier is torchvision's: fc6, fc7 and the final Dense (`head`) with the dropout before
  fc6 and fc7; `pre_logits` is what it reads, the pooled map flattened. With `fc_in_trunk`, fc6
  and fc7 (and their dropout) are part of the trunk instead (timm's split), the classifier is
  `head`, and `pre_logits` is fc7's output (R-CNN's region feature).

  Attributes:
    num_classes: Number of output logits; None builds no classifier.
    convs: One `(filters, kernel, stride, padding, pool)` per convolution; `pool` adds a 3x3/2
      max-pool after its ReLU.
    ceil_mode: Round pooled sizes up (ZFNet's sizes) rather than down (torchvision's AlexNet).
    hidden: Width of the two hidden dense layers.
    pooled_size: Side of the adaptive average pool before the classifier.
    dropout_rate: Dropout before each hidden dense layer, in training.
    fc_in_trunk: Keep fc6 and fc7 without a classifier (`num_classes=None`), and read
      `pre_logits` from fc7 (B, hidden), e.g. for R-CNN's region features. Models with a
      classifier have the same parameters either way.
    dtype: Computation dtype (e.g. jnp.bfloat16 for mixed precision).
    param_dtype: Parameter dtype.
  """

  num_classes: int | None
  convs: Sequence[ConvSpec] = ALEXNET_CONVS
  ceil_mode: bool = False
  hidden: int = 4096
  pooled_size: int = 6
  dropout_rate: float = 0.5
  fc_in_trunk: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array,
               train: bool = False) -> tuple[jax.Array | None, dict[str, jax.Array]]:
    """Classifies a batch of images.

    Args:
      x: Images, (B, H, W, C).
      train: Enables dropout, which then needs a `'dropout'` rng.

    Returns:
      `(logits, features)`: float32 logits (B, num_classes), or None without a classifier, and
      activations by name: `conv1` .. `conv5` after each ReLU (and its max-pool, where there is
      one), `pooled` (B, 6, 6, C), `fc6`, `fc7` (B, hidden) after their ReLU (where they are
      built) and `pre_logits`: (B, 36 C) flattened `pooled`, or (B, hidden) `fc7` with
      `fc_in_trunk`.
    """
    # Initialised as torchvision's VGG: He (fan-out) convolutions, a normal(0.01) classifier.
    conv = layers.conv(self.dtype, self.param_dtype)
    dense = layers.classifier_dense(self.dtype, self.param_dtype)

    out = {}
    for i, (filters, kernel, stride, padding, pool) in enumerate(self.convs):
      pads = [conv_padding(size, kernel, padding) for size in x.shape[1:3]]
      x = nn.relu(conv(filters, (kernel, kernel), (stride, stride), padding=pads,
                       name=f"conv{i + 1}")(x))
      if pool:
        x = pooling.torch_max_pool(x, 3, 2, ceil_mode=self.ceil_mode)
      out[f"conv{i + 1}"] = x  # AlexNet at 224: 27, 13, 13, 13, 6 px.

    x = pooling.adaptive_avg_pool(x, (self.pooled_size, self.pooled_size))  # (B, 6, 6, C)
    out["pooled"] = x
    # NHWC flattening: porting torchvision's fc6 weight needs its inputs permuted from (C, H, W).
    x = x.reshape(x.shape[0], -1)  # (B, 36 C)

    def fc(x):  # Dropout -> fc6 -> ReLU -> dropout -> fc7 -> ReLU.
      for name in ("fc6", "fc7"):
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        out[name] = x = nn.relu(dense(self.hidden, name=name)(x))  # (B, hidden)
      return x

    if self.fc_in_trunk:
      x = fc(x)
    out["pre_logits"] = x  # (B, 36 C), or (B, hidden) with fc_in_trunk
    if self.num_classes is None:
      return None, out
    if not self.fc_in_trunk:
      x = fc(x)
    x = dense(self.num_classes, name="head")(x)
    # Softmax and the loss run in float32 (float64 in float64 mode), even under bfloat16.
    return x.astype(precision.output_dtype(self.dtype)), out


ZFNet = functools.partial(AlexNet, convs=ZFNET_CONVS, ceil_mode=True)
