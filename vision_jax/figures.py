"""Matplotlib plumbing every picture shares: a grid of panels of known size, images, saving,
class colours and heat-map overlays.

Figures are laid out in inches and saved at `DPI` without a tight bounding box, so a PNG's pixel
size is exactly `figsize * DPI`: each picture's docstring states it, and the tests check it.
"""

import matplotlib

matplotlib.use("Agg")  # Files only; never needs a display.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 100
# The band above the panels: room for the panels' own titles, plus a line per title line.
TITLE_BASE_INCHES = 0.25
TITLE_LINE_INCHES = 0.25


def grid(rows: int, cols: int, panel: tuple[float, float] = (2.0, 2.0),
         title: str = "") -> tuple[plt.Figure, np.ndarray]:
  """A figure of `rows x cols` panels, each `panel` (width, height) inches, plus a title band.

  Returns:
    The figure and a (rows, cols) array of axes with ticks off. The figure is
    `cols * panel[0] * DPI` pixels wide and `(rows * panel[1] + band) * DPI` high, where the
    title band is 0.25 inch plus 0.25 inch per line of `title` (e.g. 50 pixels for one line).
  """
  band = title_band(title)
  width, height = cols * panel[0], rows * panel[1] + band
  fig, axes = plt.subplots(rows, cols, figsize=(width, height), squeeze=False)
  fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - band / height,
                      wspace=0.15, hspace=0.3)
  for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
  if title:
    fig.suptitle(title, y=1 - 0.05 / height, va="top", fontsize=11)
  return fig, axes


def title_band(title: str) -> float:
  """Inches above the panels for `title` (see `grid`)."""
  lines = len(title.splitlines()) if title else 0
  return TITLE_BASE_INCHES + TITLE_LINE_INCHES * lines


def show(ax: plt.Axes, image: np.ndarray, title: str = "", **kwargs) -> None:
  """Draws an (H, W), (H, W, 1) or (H, W, 3) image; floats are min-max scaled to [0, 1]."""
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  if image.ndim == 3 and image.dtype != np.uint8:
    lo, hi = image.min(), image.max()
    image = (image - lo) / (hi - lo if hi > lo else 1.0)
  if image.ndim == 2:
    kwargs.setdefault("cmap", "gray")
    if image.dtype == np.uint8:
      kwargs.setdefault("vmin", 0)
      kwargs.setdefault("vmax", 255)
  ax.imshow(image, interpolation="nearest", **kwargs)
  if title:
    ax.set_title(title, fontsize=9)


def save(fig: plt.Figure, path: str) -> str:
  """Writes `fig` as a PNG at `DPI` and closes it; returns `path`."""
  fig.savefig(path, dpi=DPI)
  plt.close(fig)
  return path


def class_colours(num_classes: int) -> np.ndarray:
  """(K, 3) RGB in [0, 1]: dark grey for class 0 (background), distinct hues for the others."""
  cmap = matplotlib.colormaps["tab20" if num_classes <= 21 else "hsv"]
  others = [cmap(i / max(num_classes - 1, 1) if num_classes > 21 else i)[:3]
            for i in range(num_classes - 1)]
  return np.array([(0.2, 0.2, 0.2), *others], np.float32)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
  """An (H, W, 3) float image: `heat` in [0, 1] as the jet colour map over a uint8 image."""
  rgb = np.asarray(image, np.float32) / 255.0
  if rgb.shape[-1] == 1:
    rgb = np.repeat(rgb, 3, axis=-1)
  colours = matplotlib.colormaps["jet"](np.clip(heat, 0, 1))[..., :3]  # (H, W, 3)
  return (1 - alpha) * rgb + alpha * colours
