"""GoogLeNet / Inception v1 (Szegedy et al. 2014, "Going Deeper with Convolutions").

Built as torchvision builds it, which differs from the paper in ways that keep its weights
portable here:

- Every convolution is followed by BatchNorm (epsilon 1e-3, as torchvision's) and has no bias.
  The paper, which predates BatchNorm, has none, and uses LRN after the first convolutions.
- The "5x5" branch of each inception block uses a 3x3 convolution (a known torchvision quirk
  that its pretrained weights depend on).
- Max-pools round sizes up (ceil mode); the last one before stage 5 is 2x2/2.
- The two auxiliary classifiers (after 4a and 4d) average-pool adaptively to 4x4 (the paper's
  5x5/3 pool at 224 px), then 1x1 conv 128 -> dense 1024 -> dropout 0.7 -> classes.

Parameters at 1000 classes: 6,624,904 without the auxiliary heads (`aux_logits=False`, as
torchvision's `googlenet(aux_logits=False)`), 13,004,888 with them (the default).

The auxiliary heads run only when `train=True` (and at `init`, so that their parameters exist);
their float32 logits are then in `features["aux1"]` and `features["aux2"]`, for the training loss
to weigh (0.3 each in the paper). Evaluation does not compute them.

`transform_input=True` re-normalises inputs as torchvision's `transform_input` does: it maps
images normalised with the ImageNet mean/std to images normalised with mean = std = 0.5, which
torchvision's pretrained GoogLeNet weights (IMAGENET1K_V1, "ported from the original paper")
expect. torchvision turns it on whenever it loads those weights and leaves it off for random
init, as our default (False) does; set it when using weights converted from them (`torch_import`).

Small inputs: pools smaller than their window give 1 px, and the auxiliary heads' adaptive pool
works on maps smaller than 4x4, so any size from 1 px up works.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vision_jax.models import layers, pooling, precision
from vision_jax.models.info import IMAGENET_MEAN, IMAGENET_STD
from vision_jax.models.layers import ConvNormAct, ModuleDef

# Inception blocks by name: (1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5", pool projection).
INCEPTION_BLOCKS: dict[str, tuple[int, int, int, int, int, int]] = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}


class Inception(nn.Module):
  """Four parallel branches concatenated on channels: 1x1; 1x1 -> 3x3; 1x1 -> 3x3; pool -> 1x1.

  Attributes:
    widths: (1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5", pool projection) filters.
    conv_norm: `ConvNormAct` constructor with the conv and norm layers bound.
  """

  widths: tuple[int, int, int, int, int, int]
  conv_norm: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    w1, r3, w3, r5, w5, wp = self.widths
    b1 = self.conv_norm(w1, kernel_size=(1, 1), name="b1")(x)
    b2 = self.conv_norm(r3, kernel_size=(1, 1), name="b2_reduce")(x)
    b2 = self.conv_norm(w3, name="b2")(b2)
    b3 = self.conv_norm(r5, kernel_size=(1, 1), name="b3_reduce")(x)
    b3 = self.conv_norm(w5, name="b3")(b3)  # 3x3, as torchvision (the paper: 5x5).
    b4 = pooling.torch_max_pool(x, 3, 1, padding=1, ceil_mode=True)
    b4 = self.conv_norm(wp, kernel_size=(1, 1), name="b4")(b4)
    return jnp.concatenate([b1, b2, b3, b4], axis=-1)  # (B, H, W, w1 + w3 + w5 + wp)


class InceptionAux(nn.Module):
  """Auxiliary classifier: adaptive 4x4 average pool, 1x1 conv, dense, dropout, dense.

  Attributes:
    num_classes: Number of output logits.
    conv_norm: `ConvNormAct` constructor with the conv and norm layers bound.
    dense: Dense layer constructor.
    dropout_rate: Dropout before the last layer.
  """

  num_classes: int
  conv_norm: ModuleDef
  dense: ModuleDef
  dropout_rate: float = 0.7

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = pooling.adaptive_avg_pool(x, (4, 4))  # (B, 4, 4, C)
    x = self.conv_norm(128, kernel_size=(1, 1), name="conv")(x)
    x = x.reshape(x.shape[0], -1)  # (B, 2048)
    x = nn.relu(self.dense(1024, name="fc1")(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = self.dense(self.num_classes, name="fc2")(x)
    return x.astype(precision.output_dtype(x.dtype))


class GoogLeNet(nn.Module):
  """GoogLeNet classifier.

  The classifier is the dropout and the final Dense (`head`), plus the auxiliary classifiers;
  `pre_logits` is what the final one reads, the globally average-pooled stage 5.

  Attributes:
    num_classes: Number of output logits; None builds no classifier (no dropout, no `head`, no
      auxiliary classifiers, whatever `aux_logits` says).
    aux_logits: Build the two auxiliary classifiers (computed only in training).
    transform_input: Map ImageNet-mean/std-normalised inputs to mean = std = 0.5 first, as
      torchvision's pretrained GoogLeNet does (see the module docstring).
    dropout_rate: Dropout before the final classifier, in training.
    aux_dropout_rate: Dropout inside the auxiliary classifiers.
    bn_axis_name: Device axis over which BatchNorm averages batch statistics; None normalises
      with each device's local batch.
    dtype: Computation dtype (e.g. jnp.bfloat16 for mixed precision).
    param_dtype: Parameter dtype.
  """

  num_classes: int | None
  aux_logits: bool = True
  transform_input: bool = False
  dropout_rate: float = 0.2
  aux_dropout_rate: float = 0.7
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
        `'batch_stats'` collection, enable dropout (needs a `'dropout'` rng) and compute the
        auxiliary classifiers.

    Returns:
      `(logits, features)`: float32 logits (B, num_classes), or None without a classifier, and
      activations by name (sizes at 224x224): `stem` (B, 28, 28, 192), `stage3` after 3b
      (B, 28, 28, 480), `stage4` after 4e (B, 14, 14, 832), `stage5` after 5b (B, 7, 7, 1024),
      `pooled` = `pre_logits` (B, 1024); in training with `aux_logits` (and a classifier),
      also `aux1` and `aux2`, float32 logits (B, num_classes).
    """
    # epsilon 1e-3, not 1e-5: torchvision's GoogLeNet uses it, and ported weights expect it.
    conv_norm = functools.partial(
        ConvNormAct, conv=layers.conv(self.dtype, self.param_dtype, use_bias=False),
        norm=layers.batch_norm(train, self.bn_axis_name, self.dtype, self.param_dtype,
                               epsilon=1e-3))
    dense = layers.classifier_dense(self.dtype, self.param_dtype)
    # Auxiliary heads cost compute and parameters only where they are used: in training, and at
    # init, so that variables initialised in eval mode can still be trained.
    run_aux = (self.aux_logits and self.num_classes is not None
               and (train or self.is_initializing()))

    out = {}
    if self.transform_input:
      # torchvision's `transform_input` undoes the ImageNet normalisation (RGB) and applies
      # mean = std = 0.5: (x * std + mean - 0.5) / 0.5 per channel, computed as torchvision does.
      scale = jnp.array([s / 0.5 for s in IMAGENET_STD], x.dtype)
      shift = jnp.array([(m - 0.5) / 0.5 for m in IMAGENET_MEAN], x.dtype)
      x = x * scale + shift  # (B, H, W, 3)
    x = conv_norm(64, kernel_size=(7, 7), strides=(2, 2), name="conv1")(x)  # (B, 112, 112, 64)
    x = pooling.torch_max_pool(x, 3, 2, ceil_mode=True)  # (B, 56, 56, 64)
    x = conv_norm(64, kernel_size=(1, 1), name="conv2")(x)
    x = conv_norm(192, name="conv3")(x)
    x = pooling.torch_max_pool(x, 3, 2, ceil_mode=True)  # (B, 28, 28, 192)
    out["stem"] = x

    for name in ("3a", "3b"):
      x = Inception(INCEPTION_BLOCKS[name], conv_norm, name=f"inception{name}")(x)
    out["stage3"] = x  # (B, 28, 28, 480)
    x = pooling.torch_max_pool(x, 3, 2, ceil_mode=True)  # (B, 14, 14, 480)

    for name in ("4a", "4b", "4c", "4d", "4e"):
      x = Inception(INCEPTION_BLOCKS[name], conv_norm, name=f"inception{name}")(x)
      if run_aux and name in ("4a", "4d"):
        aux = "aux1" if name == "4a" else "aux2"
        out[aux] = InceptionAux(self.num_classes, conv_norm, dense, self.aux_dropout_rate,
                                name=aux)(x, train)  # float32 (B, num_classes)
    out["stage4"] = x  # (B, 14, 14, 832)
    x = pooling.torch_max_pool(x, 2, 2, ceil_mode=True)  # (B, 7, 7, 832)

    for name in ("5a", "5b"):
      x = Inception(INCEPTION_BLOCKS[name], conv_norm, name=f"inception{name}")(x)
    out["stage5"] = x  # (B, 7, 7, 1024)

    x = jnp.mean(x, axis=(1, 2))  # (B, 1024)
    out["pooled"] = out["pre_logits"] = x
    if self.num_classes is None:
      return None, out
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = dense(self.num_classes, name="head")(x)
    # Softmax and the loss run in float32 (float64 in float64 mode), even under bfloat16.
    return x.astype(precision.output_dtype(self.dtype)), out
