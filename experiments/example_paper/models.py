"""The paper's backbone (`paper_net`, registered) and its head on any backbone."""

from collections.abc import Callable, Sequence
import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from vision_jax import models
from vision_jax.models import backbone as backbone_lib


@models.register("paper_net")
class PaperNet(nn.Module):
  """A small residual-free CNN that follows the backbone contract (`vision_jax.models.backbone`).

  Attributes:
    num_classes: Output logits; None builds no classifier (a headless backbone).
    widths: Channels of each stage; stage k halves the resolution (stride 2**k).
    dtype: Computation dtype.
    param_dtype: Parameter dtype.
    bn_axis_name: BatchNorm's axis name under `pmap` (the trainer sets it).
  """
  num_classes: int | None
  widths: Sequence[int] = (16, 32)
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array | None, dict]:
    conv = functools.partial(nn.Conv, kernel_size=(3, 3), use_bias=False, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             dtype=self.dtype, param_dtype=self.param_dtype,
                             axis_name=self.bn_axis_name)
    features = {}
    for k, width in enumerate(self.widths, start=1):
      x = nn.relu(norm(name=f"norm{k}a")(conv(width, name=f"conv{k}a")(x)))
      x = conv(width, strides=(2, 2), name=f"conv{k}b")(x)
      x = nn.relu(norm(name=f"norm{k}b")(x))  # (B, H / 2**k, W / 2**k, width)
      features[f"stage{k}"] = x
    features["pre_logits"] = x.mean(axis=(1, 2))  # (B, widths[-1])
    if self.num_classes is None:
      return None, features
    logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                      name="head")(features["pre_logits"])
    return logits.astype(jnp.float32), features


class ShapeAndCentre(nn.Module):
  """Any backbone (a registry name, a module or a constructor), then two heads on `pre_logits`:
  class logits and the object's centre.

  Attributes:
    backbone: What `vision_jax.models.backbone.build` takes.
    num_classes: Shape classes.
    image_size: Side of the input images; the centre head predicts in [0, 1] and is scaled.
    backbone_kwargs: Other fields of the backbone.
    dtype: Computation dtype.
    param_dtype: Parameter dtype.
    bn_axis_name: Passed to the backbone's BatchNorm under `pmap`.
  """
  backbone: str | nn.Module | Callable[..., nn.Module]
  num_classes: int
  image_size: int
  backbone_kwargs: flax.core.FrozenDict = flax.core.FrozenDict()
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, dict]:
    """Returns `(logits (B, K), features)`; `features["centre"]` is (B, 1, 2) (y, x) pixels."""
    kwargs = dict(self.backbone_kwargs)
    if self.bn_axis_name is not None:
      kwargs["bn_axis_name"] = self.bn_axis_name
    net = backbone_lib.build(self.backbone, dtype=self.dtype, param_dtype=self.param_dtype,
                             **kwargs)
    _, features = net(x, train=train)
    pre_logits = features["pre_logits"]  # (B, D)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                      name="classes")(pre_logits)
    centre = nn.sigmoid(nn.Dense(2, dtype=self.dtype, param_dtype=self.param_dtype,
                                 name="centre")(pre_logits)) * self.image_size
    return logits.astype(jnp.float32), {**features, "centre": centre[:, None].astype(jnp.float32)}
