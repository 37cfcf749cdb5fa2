"""A backbone of one's own, registered nowhere, for the tests of heads that take any backbone."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class UserBackbone(nn.Module):
  """Follows the backbone contract (`vision_jax.models.backbone`): `num_stages` stride-2 3x3
  convolutions `conv1`, `conv2`, ... of `width` channels with ReLU, `stage<k>` after each
  (B, H / 2**k, W / 2**k, width), and `pre_logits` the last one averaged (B, width)."""
  num_classes: int | None
  num_stages: int = 3
  width: int = 8
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    features = {}
    for k in range(1, self.num_stages + 1):
      x = nn.relu(nn.Conv(self.width, (3, 3), (2, 2), dtype=self.dtype,
                          param_dtype=self.param_dtype, name=f"conv{k}")(x))
      features[f"stage{k}"] = x
    features["pre_logits"] = x.mean(axis=(1, 2))
    if self.num_classes is None:
      return None, features
    return nn.Dense(self.num_classes, name="head")(features["pre_logits"]), features
