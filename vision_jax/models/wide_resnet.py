"""Wide ResNet for small images (Zagoruyko & Komodakis 2016, "Wide Residual Networks").

A 3x3 conv with 16 filters, three stages of pre-activation basic blocks with 16k, 32k, 64k
filters (k the widen factor; the second and third stage halve the resolution), then BN-ReLU,
global average pooling and the classifier. Depth d = 6n + 4 counts the stem, 2n convolutions per
stage and the classifier (the 1x1 projection shortcuts are not counted). WRN-d-k in the paper:

- WRN-28-10: 36,479,194 parameters at 10 classes (the paper's 36.5M).
- WRN-40-4: 8,949,210 parameters at 10 classes (the paper's 8.9M).

Unlike the post-activation blocks of resnet.py (conv-BN-ReLU, `ConvNormAct`), each block here
starts with BN-ReLU, and where the shape changes the projection shortcut takes that
pre-activated input, as in the authors' code.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vision_jax.models import layers, precision
from vision_jax.models.layers import drop_path, drop_path_rates, ModuleDef


class PreActBlock(nn.Module):
  """BN-ReLU-conv3x3, BN-ReLU-dropout-conv3x3, plus a shortcut.

  Attributes:
    features: Output channels.
    conv: Convolution constructor, called as `conv(features, kernel_size, strides)`; pads 3x3
      windows by 1 on every side, as PyTorch does.
    norm: BatchNorm constructor.
    strides: Strides of the first convolution (and of the projection shortcut).
    dropout_rate: Dropout between the two convolutions, in training.
    drop_path_rate: Stochastic depth: probability of dropping the residual branch in training.
  """

  features: int
  conv: ModuleDef
  norm: ModuleDef
  strides: tuple[int, int] = (1, 1)
  dropout_rate: float = 0.0
  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    pre = nn.relu(self.norm(name="norm1")(x))
    y = self.conv(self.features, (3, 3), self.strides, name="conv1")(pre)
    y = nn.relu(self.norm(name="norm2")(y))
    y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    y = self.conv(self.features, (3, 3), name="conv2")(y)
    y = drop_path(y, self.drop_path_rate, train)
    shortcut = x
    if x.shape[-1] != self.features or self.strides != (1, 1):
      shortcut = self.conv(
          self.features, (1, 1), self.strides, padding="VALID", name="proj")(pre)
    return shortcut + y  # (B, H / stride, W / stride, features)


class WideResNet(nn.Module):
  """Wide residual network classifier for small (e.g. 32x32) images.

  The classifier is the final Dense (`head`); `pre_logits` is what it reads, the globally
  average-pooled output of the final BN-ReLU.

  Attributes:
    num_classes: Number of output logits; None builds no classifier.
    depth: 6n + 4, for n blocks per stage.
    widen_factor: k; the stages have 16k, 32k, 64k filters.
    dropout_rate: Dropout between the convolutions of each block, in training (the paper uses
      0.3 in some experiments; 0 by default).
    drop_path_rate: Stochastic depth (Huang et al. 2016): each residual branch is dropped per
      example in training with a probability rising linearly from 0 (first block) to this (last
      block); 0 turns it off.
    bn_axis_name: Device axis over which BatchNorm averages batch statistics; None normalises
      with each device's local batch.
    dtype: Computation dtype (e.g. jnp.bfloat16 for mixed precision).
    param_dtype: Parameter dtype.
  """

  num_classes: int | None
  depth: int = 28
  widen_factor: int = 10
  dropout_rate: float = 0.0
  drop_path_rate: float = 0.0
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array,
               train: bool = False) -> tuple[jax.Array | None, dict[str, jax.Array]]:
    """Classifies a batch of images.

    Args:
      x: Images, (B, H, W, C).
      train: Normalise with batch statistics and update the running averages in the mutable
        `'batch_stats'` collection; enable dropout (needs a `'dropout'` rng if dropout_rate > 0).

    Returns:
      `(logits, features)`: float32 logits (B, num_classes), or None without a classifier,
      and activations by name: `stem`
      (B, H, W, 16), `stage1` .. `stage3` after each stage ((B, H, W, 16k), (B, H/2, W/2, 32k),
      (B, H/4, W/4, 64k); pre-activation, so before the final BN-ReLU) and `pooled` =
      `pre_logits` (B, 64k).
    """
    if (self.depth - 4) % 6:
      raise ValueError(f"WideResNet depth must be 6n + 4, got {self.depth}")
    blocks_per_stage = (self.depth - 4) // 6
    # Symmetric padding as in resnet.py (for stride 2 flax's "SAME" pads only the bottom/right,
    # PyTorch both sides), no biases: every convolution feeds a BatchNorm or a residual sum.
    conv = layers.conv(self.dtype, self.param_dtype, padding=((1, 1), (1, 1)), use_bias=False)
    norm = layers.batch_norm(train, self.bn_axis_name, self.dtype, self.param_dtype)

    out = {}
    x = conv(16, (3, 3), name="stem")(x)  # (B, H, W, 16)
    out["stem"] = x
    rates = iter(drop_path_rates(self.drop_path_rate, 3 * blocks_per_stage))
    for i, width in enumerate((16, 32, 64)):
      for j in range(blocks_per_stage):
        strides = (2, 2) if i > 0 and j == 0 else (1, 1)
        x = PreActBlock(width * self.widen_factor, conv, norm, strides, self.dropout_rate,
                        next(rates), name=f"stage{i + 1}_block{j + 1}")(x, train)
      out[f"stage{i + 1}"] = x
    x = nn.relu(norm(name="final_norm")(x))
    x = jnp.mean(x, axis=(1, 2))  # (B, 64k)
    out["pooled"] = out["pre_logits"] = x
    if self.num_classes is None:
      return None, out
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="head")(x)
    # Softmax and the loss run in float32 (float64 in float64 mode), even under bfloat16.
    return x.astype(precision.output_dtype(self.dtype)), out


WRN28_10 = functools.partial(WideResNet, depth=28, widen_factor=10)
WRN40_4 = functools.partial(WideResNet, depth=40, widen_factor=4)
