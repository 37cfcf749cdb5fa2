"""Pictures of a trained classifier: its first-layer filters, feature maps, saliency, Grad-CAM.

These take arrays (kernels, activations, maps), not checkpoints, so they work on any model;
`vision_jax.viz.__main__` loads a workdir and calls them.
"""

import math

from flax import traverse_util
import numpy as np

from vision_jax import errors, figures


def first_conv_kernel(params: dict) -> tuple[str, np.ndarray]:
  """The first (KH, KW, C_in, C_out) convolution kernel in the parameters, and its path.

  Flax creates parameters in call order, so the first 4-D `kernel` is the first layer's.

  Raises:
    ValueError: when the model has no convolution (e.g. an MLP).
  """
  for path, value in traverse_util.flatten_dict(params).items():
    if path[-1] == "kernel" and np.ndim(value) == 4:
      return "/".join(path), np.asarray(value)
  raise errors.UserError("The model has no convolution kernel (4-D 'kernel' parameter).")


def _grid_shape(n: int, max_cols: int = 8) -> tuple[int, int]:
  cols = min(n, max_cols)
  return math.ceil(n / cols), cols


def plot_first_layer(kernel: np.ndarray, path: str, title: str = "",
                     max_filters: int = 64) -> str:
  """Each output channel's filter as a small image.

  RGB filters (3 input channels) are shown in colour, each min-max scaled to [0, 1]; others as
  the mean over input channels, blue (negative) to red (positive), symmetric around 0.

  Args:
    kernel: (KH, KW, C_in, C_out).
    path: output PNG, 8 columns (fewer if fewer filters) of 100 x 100 pixels, one row per 8
      filters, plus the 50-pixel title band.
    title: figure title.
    max_filters: show at most this many (the first ones).

  Returns:
    `path`.
  """
  n = min(kernel.shape[-1], max_filters)
  rows, cols = _grid_shape(n)
  fig, axes = figures.grid(rows, cols, panel=(1.0, 1.0), title=title)
  for ax in axes.flat:
    ax.axis("off")
  for i, ax in zip(range(n), axes.flat):
    k = kernel[..., i]  # (KH, KW, C_in)
    if k.shape[-1] == 3:
      figures.show(ax, k)  # Min-max scaled per filter.
    else:
      k = k.mean(-1)
      limit = max(float(np.abs(k).max()), 1e-12)
      figures.show(ax, k, vmin=-limit, vmax=limit, cmap="bwr")
  return figures.save(fig, path)


def plot_feature_maps(image: np.ndarray, maps: np.ndarray, path: str, title: str = "",
                      max_channels: int = 15) -> str:
  """The input, then the most active channels of one layer's activations.

  Args:
    image: (H, W, C) uint8 input, as the dataset has it.
    maps: (H', W', K) activations of that image.
    path: output PNG, 8 columns of 150 x 150 pixels, 2 rows for up to 15 channels, plus the
      50-pixel title band.
    title: figure title.
    max_channels: how many channels, ranked by mean activation.

  Returns:
    `path`.
  """
  order = np.argsort(-maps.mean(axis=(0, 1)))[:max_channels]
  rows, cols = _grid_shape(len(order) + 1)
  fig, axes = figures.grid(rows, cols, panel=(1.5, 1.5), title=title)
  for ax in axes.flat:
    ax.axis("off")
  figures.show(axes.flat[0], image, title="input")
  for ax, k in zip(axes.flat[1:], order):
    figures.show(ax, maps[..., k], title=f"channel {k}", cmap="viridis")
  return figures.save(fig, path)


def _labels(classes, labels, class_names) -> list[str]:
  """"circle" when right (or unlabelled), "circle (true: ring)" when wrong."""
  return [class_names[c] + ("" if y is None or y == c else f" (true: {class_names[y]})")
          for c, y in zip(classes, labels)]


def plot_saliency(images: np.ndarray, maps: np.ndarray, classes, labels, class_names,
                  path: str, title: str = "") -> str:
  """Images above their saliency maps (bright: pixels whose change moves the logit most).

  Args:
    images: (B, H, W, C) uint8.
    maps: (B, H, W) saliency.
    classes: (B,) explained classes; labels: (B,) true labels or Nones.
    class_names: a name per class.
    path: output PNG, B columns of 200 pixels, 2 rows of 200 pixels, plus the title band.
    title: figure title.

  Returns:
    `path`.
  """
  fig, axes = figures.grid(2, len(images), panel=(2.0, 2.0), title=title)
  for ax_img, ax_map, image, m, text in zip(axes[0], axes[1], images, maps,
                                            _labels(classes, labels, class_names)):
    figures.show(ax_img, image, title=text)
    figures.show(ax_map, m, cmap="hot", vmin=0)
  return figures.save(fig, path)


def plot_gradcam(images: np.ndarray, maps: np.ndarray, classes, labels, class_names,
                 path: str, title: str = "") -> str:
  """Images above their Grad-CAM maps laid over them (red: where the class evidence is).

  Args:
    images: (B, H, W, C) uint8.
    maps: (B, H, W) in [0, 1].
    classes: (B,) explained classes; labels: (B,) true labels or Nones.
    class_names: a name per class.
    path: output PNG, B columns of 200 pixels, 2 rows of 200 pixels, plus the title band.
    title: figure title.

  Returns:
    `path`.
  """
  fig, axes = figures.grid(2, len(images), panel=(2.0, 2.0), title=title)
  for ax_img, ax_map, image, m, text in zip(axes[0], axes[1], images, maps,
                                            _labels(classes, labels, class_names)):
    figures.show(ax_img, image, title=text)
    ax_map.imshow(np.clip(figures.overlay(image, m), 0, 1), interpolation="nearest")
  return figures.save(fig, path)
