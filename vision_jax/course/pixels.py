"""Images are numbers: a patch of a real image with each pixel's value written on it."""

import matplotlib.patches
import numpy as np

from vision_jax import figures


def busiest_patch(image: np.ndarray, size: int) -> tuple[int, int]:
  """(top, left) of the `size x size` patch with the largest pixel variance (most detail)."""
  h, w = image.shape[:2]
  best, where = -1.0, (0, 0)
  step = max(1, size // 2)
  for top in range(0, h - size + 1, step):
    for left in range(0, w - size + 1, step):
      v = float(image[top:top + size, left:left + size].var())
      if v > best:
        best, where = v, (top, left)
  return where


def plot_pixels(image: np.ndarray, path: str, size: int = 12,
                corner: tuple[int, int] | None = None, title: str = "") -> str:
  """The whole image with the patch outlined, next to the patch with its values printed.

  Args:
    image: (H, W) uint8 greyscale.
    path: output PNG, 1200 x 650 pixels.
    size: the patch is `size x size` pixels (12 in the course notes).
    corner: (top, left) of the patch; None picks the most detailed one.
    title: figure title.

  Returns:
    `path`.
  """
  if image.ndim != 2:
    raise ValueError(f"plot_pixels wants a greyscale (H, W) image, got shape {image.shape}.")
  top, left = busiest_patch(image, size) if corner is None else corner
  patch = image[top:top + size, left:left + size]  # (size, size)
  fig, axes = figures.grid(1, 2, panel=(6.0, 6.0),
                           title=title or "What the computer sees: a matrix of numbers")
  ax_image, ax_patch = axes[0]
  figures.show(ax_image, image, title=f"{image.shape[0]} x {image.shape[1]} image",
               vmin=0, vmax=255)
  ax_image.add_patch(matplotlib.patches.Rectangle(
      (left - 0.5, top - 0.5), size, size, fill=False, edgecolor="red", linewidth=2))
  figures.show(ax_patch, patch, title=f"the {size} x {size} patch in red, values 0-255",
               vmin=0, vmax=255)
  fontsize = max(4, min(12, int(150 / size)))
  for (r, c), value in np.ndenumerate(patch):
    ax_patch.text(c, r, str(int(value)), ha="center", va="center", fontsize=fontsize,
                  color="black" if value > 127 else "white")
  return figures.save(fig, path)
