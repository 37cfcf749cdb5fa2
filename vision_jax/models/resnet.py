"""ResNet v1.5 (He et al. 2015, "Deep Residual Learning for Image Recognition").

One `ResNet` class covers both families in the paper; the variants at the bottom are data:

- ImageNet (Sec. 3.4): a 7x7/2 conv and 3x3/2 max-pool stem, four stages of 64..512 filters.
  "v1.5" puts the downsampling stride of a bottleneck block on its 3x3 conv rather than the first
  1x1 (as torchvision does), which is slightly more accurate.
- CIFAR (Sec. 4.2): a 3x3/1 conv stem, three stages of 16/32/64 filters, 6n + 2 layers. Where the
  shape changes we use projection shortcuts (the paper's option B) instead of zero padding.
"""

import functools
from collections.abc import Sequence
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from vision_jax.models import layers, precision
from vision_jax.models.layers import ConvNormAct, drop_path, drop_path_rates, ModuleDef


class BasicBlock(nn.Module):
  """Two 3x3 convolutions and a shortcut; output has `features` channels.

  Attributes:
    features: Channels of both convolutions and of the output.
    conv_norm: `ConvNormAct` constructor with the conv and norm layers bound.
    strides: Strides of the first convolution (and of the projection shortcut).
    drop_path_rate: Stochastic depth: probability of dropping the residual branch in training.
  """

  features: int
  conv_norm: ModuleDef
  strides: tuple[int, int] = (1, 1)
  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    y = self.conv_norm(self.features, strides=self.strides, name="conv1")(x)
    y = self.conv_norm(self.features, act=None, zero_init_scale=True, name="conv2")(y)
    y = drop_path(y, self.drop_path_rate, train)
    shortcut = x
    if shortcut.shape != y.shape:
      shortcut = self.conv_norm(
          self.features, kernel_size=(1, 1), strides=self.strides, act=None, name="proj")(x)
    return nn.relu(shortcut + y)


class BottleneckBlock(nn.Module):
  """1x1 reduce, 3x3, 1x1 expand (x4) and a shortcut; output has `4 * features` channels.

  Attributes:
    features: Channels of the two inner convolutions.
    conv_norm: `ConvNormAct` constructor with the conv and norm layers bound.
    strides: Strides of the 3x3 convolution (v1.5) and of the projection shortcut.
    drop_path_rate: Stochastic depth: probability of dropping the residual branch in training.
  """

  features: int
  conv_norm: ModuleDef
  strides: tuple[int, int] = (1, 1)
  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    y = self.conv_norm(self.features, kernel_size=(1, 1), name="conv1")(x)
    y = self.conv_norm(self.features, strides=self.strides, name="conv2")(y)
    y = self.conv_norm(
        4 * self.features, kernel_size=(1, 1), act=None, zero_init_scale=True, name="conv3")(y)
    y = drop_path(y, self.drop_path_rate, train)
    shortcut = x
    if shortcut.shape != y.shape:
      shortcut = self.conv_norm(
          4 * self.features, kernel_size=(1, 1), strides=self.strides, act=None, name="proj")(x)
    return nn.relu(shortcut + y)


class ResNet(nn.Module):
  """Residual network classifier.

  The classifier is the final Dense (`head`); `pre_logits` is what it reads, the globally
  average-pooled last stage.

  Attributes:
    num_classes: Number of output logits; None builds no classifier.
    stage_sizes: Number of blocks in each stage. Stage i has `num_filters * 2**i` filters and,
      except for the first, halves the resolution in its first block.
    block_cls: `BasicBlock` or `BottleneckBlock`.
    num_filters: Filters of the stem and of the first stage (64 for ImageNet, 16 for CIFAR).
    stem: "imagenet" (7x7/2 conv, 3x3/2 max-pool: 4x downsampling) or "cifar" (3x3/1 conv).
    drop_path_rate: Stochastic depth (Huang et al. 2016): in training, each residual branch is
      dropped per example with a probability rising linearly from 0 (first block) to this
      (last block); 0 turns it off. Needs a `'dropout'` rng when > 0.
    bn_axis_name: Device axis over which BatchNorm averages batch statistics (e.g. the pmap or
      shard_map axis); None normalises with each device's local batch.
    dtype: Computation dtype (e.g. jnp.bfloat16 for mixed precision).
    param_dtype: Parameter dtype.
  """

  num_classes: int | None
  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  num_filters: int = 64
  stem: Literal["imagenet", "cifar"] = "imagenet"
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
      train: Normalise with batch statistics and update the running averages in the
        `'batch_stats'` collection (which must then be mutable); otherwise use the averages.

    Returns:
      `(logits, features)`: float32 logits (B, num_classes), or None without a classifier, and
      the activations after the stem (`stem`), after each stage (`stage1`, `stage2`, ...:
      (B, H', W', C')) and after global average pooling (`pooled` = `pre_logits`: (B, C')).
    """
    # No conv biases: every convolution feeds a BatchNorm, whose offset replaces them.
    conv_norm = functools.partial(
        ConvNormAct, conv=layers.conv(self.dtype, self.param_dtype, use_bias=False),
        norm=layers.batch_norm(train, self.bn_axis_name, self.dtype, self.param_dtype))

    out = {}
    if self.stem == "imagenet":
      x = conv_norm(self.num_filters, kernel_size=(7, 7), strides=(2, 2), name="stem")(x)
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))  # (B, H/4, W/4, F)
    elif self.stem == "cifar":
      x = conv_norm(self.num_filters, kernel_size=(3, 3), name="stem")(x)  # (B, H, W, F)
    else:
      raise ValueError(f"Unknown stem {self.stem!r}; valid choices: ['cifar', 'imagenet']")
    out["stem"] = x

    rates = iter(drop_path_rates(self.drop_path_rate, sum(self.stage_sizes)))
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        strides = (2, 2) if i > 0 and j == 0 else (1, 1)
        x = self.block_cls(
            features=self.num_filters * 2**i, conv_norm=conv_norm, strides=strides,
            drop_path_rate=next(rates), name=f"stage{i + 1}_block{j + 1}")(x, train)
      out[f"stage{i + 1}"] = x  # (B, H', W', C') with C' = filters (x4 for bottlenecks)

    x = jnp.mean(x, axis=(1, 2))  # (B, C')
    out["pooled"] = out["pre_logits"] = x
    if self.num_classes is None:
      return None, out
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="head")(x)
    # Softmax and the loss run in float32 (float64 in float64 mode), even under bfloat16.
    return x.astype(precision.output_dtype(self.dtype)), out


_cifar = functools.partial(ResNet, block_cls=BasicBlock, num_filters=16, stem="cifar")
ResNet20 = functools.partial(_cifar, stage_sizes=(3, 3, 3))
ResNet32 = functools.partial(_cifar, stage_sizes=(5, 5, 5))
ResNet56 = functools.partial(_cifar, stage_sizes=(9, 9, 9))

ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BottleneckBlock)
ResNet101 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), block_cls=BottleneckBlock)
ResNet152 = functools.partial(ResNet, stage_sizes=(3, 8, 36, 3), block_cls=BottleneckBlock)
