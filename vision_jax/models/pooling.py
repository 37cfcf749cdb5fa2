"""Pooling: a fast non-overlapping max-pool, and PyTorch's max/adaptive-average pooling semantics.

The PyTorch-compatible ones keep ported torchvision models (AlexNet, VGG, GoogLeNet) shape- and
value-identical, and also accept maps smaller than one window.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def max_pool(x: jax.Array, window: int) -> jax.Array:
  """Non-overlapping k×k max pooling (stride k, VALID padding), as a reshape and a max.

  Equal to `nn.max_pool(x, (k, k), strides=(k, k))`, but its gradient is a plain mask instead of
  XLA's select-and-scatter, which on CPU made max pooling the slowest op of a small CNN.

  Args:
    x: (B, H, W, C); rows and columns beyond the last full window are dropped, as VALID does.
    window: k.

  Returns:
    (B, H // k, W // k, C).
  """
  b, h, w, c = x.shape
  h, w = h // window * window, w // window * window
  x = x[:, :h, :w].reshape(b, h // window, window, w // window, window, c)
  return x.max(axis=(2, 4))


def _bin_matrix(size: int, out: int) -> np.ndarray:
  """(out, size) matrix that averages PyTorch's adaptive-pooling bins [floor(i*n/o), ceil(...))."""
  m = np.zeros((out, size), np.float32)
  for i in range(out):
    start, end = (i * size) // out, -(-((i + 1) * size) // out)
    m[i, start:end] = 1.0 / (end - start)
  return m


def adaptive_avg_pool(x: jax.Array, output_size: tuple[int, int]) -> jax.Array:
  """PyTorch's `adaptive_avg_pool2d` on (B, H, W, C): averages over computed bins.

  Written as two small averaging matrices (static, from the shapes), so it needs no resize and
  works for any H, W >= 1, also when they are smaller than the output (bins then overlap).

  Args:
    x: (B, H, W, C).
    output_size: (H', W').

  Returns:
    (B, H', W', C); `x` itself when it already has that size.
  """
  h, w = x.shape[1:3]
  if (h, w) == tuple(output_size):
    return x
  rows = jnp.asarray(_bin_matrix(h, output_size[0]), x.dtype)  # (H', H)
  cols = jnp.asarray(_bin_matrix(w, output_size[1]), x.dtype)  # (W', W)
  return jnp.einsum("ph,bhwc,qw->bpqc", rows, x, cols)


def _pool_size(size: int, window: int, stride: int, padding: int, ceil_mode: bool) -> int:
  span = size + 2 * padding - window
  if not ceil_mode:
    return max(span // stride + 1, 1)
  out = -(-span // stride) + 1
  if (out - 1) * stride >= size + padding:  # PyTorch drops a window starting in the padding.
    out -= 1
  return max(out, 1)


def torch_max_pool(x: jax.Array, window: int, stride: int, padding: int = 0,
                   ceil_mode: bool = False) -> jax.Array:
  """PyTorch's `MaxPool2d(window, stride, padding, ceil_mode)` on (B, H, W, C).

  For overlapping windows (use `layers.max_pool` for non-overlapping ones). A map smaller than
  one window gives a 1x1 output (the max over what there is) instead of an error.
  """
  pads = []
  for size in x.shape[1:3]:
    out = _pool_size(size, window, stride, padding, ceil_mode)
    extra = (out - 1) * stride + window - (size + 2 * padding)
    pads.append((padding, padding + max(extra, 0)))  # extra < 0: VALID drops the leftover.
  return nn.max_pool(x, (window, window), strides=(stride, stride), padding=pads)
