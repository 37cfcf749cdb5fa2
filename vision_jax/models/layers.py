"""Small building blocks shared by the models, and the one place their layers are configured.

Layers are injected as partially applied constructors (`ModuleDef`), so a model decides once how
every convolution and normalisation is configured and the blocks stay free of that plumbing.
`conv`, `batch_norm` and `classifier_dense` make those constructors for every zoo model: dtypes,
initialisers, BatchNorm's momentum, epsilon and float32 statistics are written here only.
"""

from collections.abc import Callable
import functools
from typing import Any

import flax.linen as nn
import jax

from vision_jax.models import precision

# A layer constructor with its configuration already bound, e.g. `partial(nn.Conv, use_bias=False)`.
ModuleDef = Callable[..., nn.Module]

# He initialisation (fan-out, normal, as torchvision's): keeps activations at unit scale under ReLU.
he_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(dtype: Any, param_dtype: Any, **fields: Any) -> ModuleDef:
  """The zoo's convolution: `nn.Conv` computing in `dtype`, He (fan-out) initialised.

  Args:
    dtype: Computation dtype.
    param_dtype: Parameter dtype.
    **fields: Other `nn.Conv` fields, the same for every call, e.g. `use_bias=False` before a
      BatchNorm, or a fixed `kernel_size` and `padding`.

  Returns:
    A constructor called as `conv(features, kernel_size, strides, padding=..., name=...)`.
  """
  return functools.partial(nn.Conv, dtype=dtype, param_dtype=param_dtype, kernel_init=he_fan_out,
                           **fields)


def batch_norm(train: bool, axis_name: str | None, dtype: Any, param_dtype: Any,
               epsilon: float = 1e-5) -> ModuleDef:
  """The zoo's BatchNorm: PyTorch's defaults (momentum 0.9 here is its 0.1), float32 statistics.

  Args:
    train: Normalise with the batch's statistics and update the running averages (in the
      mutable `'batch_stats'` collection); otherwise normalise with the running averages.
    axis_name: Device axis over which batch statistics are averaged (pmap / shard_map); None
      normalises with each device's local batch.
    dtype: Computation dtype; statistics and running averages stay float32 under bfloat16
      (`precision.float32_statistics`).
    param_dtype: Dtype of the scale and bias.
    epsilon: Added to the variance; 1e-5 as PyTorch (GoogLeNet's ported weights need 1e-3).

  Returns:
    A constructor called with keyword arguments only, e.g. `norm(name="bn")`.
  """
  return functools.partial(
      nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=epsilon,
      axis_name=axis_name, dtype=dtype, param_dtype=param_dtype,
      force_float32_reductions=precision.float32_statistics(dtype))


def classifier_dense(dtype: Any, param_dtype: Any) -> ModuleDef:
  """torchvision's classifier layers of AlexNet, VGG and GoogLeNet: `nn.Dense` with normal(0.01)
  weights and zero biases. Called as `dense(features, name=...)`."""
  return functools.partial(nn.Dense, dtype=dtype, param_dtype=param_dtype,
                           kernel_init=nn.initializers.normal(0.01))


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
