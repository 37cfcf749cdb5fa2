"""Small building blocks shared by the models.

Layers are injected as partially applied constructors (`ModuleDef`), so a model decides once how
every convolution and normalisation is configured (dtype, initialiser, train/eval BatchNorm) and
the blocks stay free of that plumbing.
"""

from collections.abc import Callable

import flax.linen as nn
import jax

# A layer constructor with its configuration already bound, e.g. `partial(nn.Conv, use_bias=False)`.
ModuleDef = Callable[..., nn.Module]


class ConvNormAct(nn.Module):
  """Convolution, then normalisation, then an optional activation.

  Attributes:
    features: Output channels.
    conv: Convolution constructor, called as `conv(features, kernel_size, strides, padding=...)`.
    norm: Normalisation constructor, called with no positional arguments.
    kernel_size: Spatial size of the convolution window.
    strides: Convolution strides.
    act: Activation applied last; None leaves the output linear (e.g. before a residual sum).
    zero_init_scale: Start the normalisation scale at zero. Used on the last layer of a residual
      branch so that each block starts as the identity, which makes deep ResNets train more
      easily (Goyal et al. 2017, "Accurate, Large Minibatch SGD").
  """

  features: int
  conv: ModuleDef
  norm: ModuleDef
  kernel_size: tuple[int, int] = (3, 3)
  strides: tuple[int, int] = (1, 1)
  act: Callable[[jax.Array], jax.Array] | None = nn.relu
  zero_init_scale: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    # Symmetric padding of k // 2 gives the same output size as "SAME", but for stride 2 flax's
    # "SAME" pads only on the bottom/right while PyTorch pads both sides; matching PyTorch keeps
    # ported torchvision weights numerically exact.
    padding = [(k // 2, k // 2) for k in self.kernel_size]
    x = self.conv(self.features, self.kernel_size, self.strides, padding=padding, name="conv")(x)
    if self.zero_init_scale:
      x = self.norm(scale_init=nn.initializers.zeros_init(), name="norm")(x)
    else:
      x = self.norm(name="norm")(x)
    if self.act is not None:
      x = self.act(x)
    return x


def drop_path(branch: jax.Array, rate: float, train: bool) -> jax.Array:
  """Stochastic depth (Huang et al. 2016): in training, drops a residual branch for a random
  `rate` fraction of the examples and scales it by 1 / (1 - rate) for the others; the identity
  otherwise, and for rate 0 (which then draws no random numbers).

  The per-example mask comes from the `'dropout'` rng, as dropout's does, so it is the same on
  any number of devices and processes and resumes exactly. Call it inside a compact module.

  Args:
    branch: (B, ...) the residual branch, before it is added to the shortcut.
    rate: Probability of dropping it, in [0, 1).
    train: Whether training.
  """
  # Dropout broadcast over every axis but the batch: one keep/drop decision per example.
  return nn.Dropout(rate, broadcast_dims=tuple(range(1, branch.ndim)), deterministic=not train,
                    name=None)(branch)


def drop_path_rates(max_rate: float, num_blocks: int) -> list[float]:
  """The linear rule of stochastic depth: 0 for the first residual block rising to `max_rate`
  for the last (timm's spacing)."""
  if num_blocks == 1:
    return [max_rate]
  return [max_rate * i / (num_blocks - 1) for i in range(num_blocks)]
