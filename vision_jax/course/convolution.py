"""Convolution by hand: slide a filter over an image, multiply elementwise, add up.

`convolve_by_hand` is the readable reference (plain loops); it computes what a CNN's "convolution"
layer computes, which is, strictly, cross-correlation: the filter is not flipped. The tests check
it against `jax.lax.conv_general_dilated`. `plot_convolution_steps` draws every step of the
course notes' example, a 5 x 5 binary image and a 3 x 3 filter.
"""

import matplotlib.patches
import numpy as np

from vision_jax import figures

# The course notes' example ("Suppose we want to compute the convolution of a 5x5 image and a
# 3x3 filter"); the result is [[4, 3, 4], [2, 4, 3], [2, 3, 4]].
NOTES_IMAGE = np.array([
    [1, 1, 1, 0, 0],
    [0, 1, 1, 1, 0],
    [0, 0, 1, 1, 1],
    [0, 0, 1, 1, 0],
    [0, 1, 1, 0, 0],
], np.float32)
NOTES_FILTER = np.array([
    [1, 0, 1],
    [0, 1, 0],
    [1, 0, 1],
], np.float32)


def convolve_by_hand(image: np.ndarray, kernel: np.ndarray, stride: int = 1,
                     padding: int = 0) -> np.ndarray:
  """2-D convolution as CNNs define it (cross-correlation), one output pixel at a time.

  out[p, q] = sum_i sum_j kernel[i, j] * image[p * stride + i, q * stride + j]
  on the image zero-padded by `padding` on every side.

  Args:
    image: (H, W).
    kernel: (KH, KW).
    stride: step of the sliding window.
    padding: zeros added around the image.

  Returns:
    (OH, OW) with OH = (H + 2 * padding - KH) // stride + 1, and OW likewise.
  """
  image = np.pad(np.asarray(image, np.float64), padding)
  kh, kw = kernel.shape
  out_h = (image.shape[0] - kh) // stride + 1
  out_w = (image.shape[1] - kw) // stride + 1
  out = np.zeros((out_h, out_w))
  for p in range(out_h):
    for q in range(out_w):
      total = 0.0
      for i in range(kh):
        for j in range(kw):
          total += kernel[i, j] * image[p * stride + i, q * stride + j]
      out[p, q] = total
  return out


def _cells(ax, values: np.ndarray, x0: float, y0: float, colours: dict, labels: dict) -> None:
  """Draws a matrix as boxed cells from (x0, y0) down-right; `colours`/`labels` by (r, c)."""
  for (r, c), v in np.ndenumerate(values):
    ax.add_patch(matplotlib.patches.Rectangle(
        (x0 + c, y0 + r), 1, 1, facecolor=colours.get((r, c), "white"), edgecolor="grey"))
    ax.text(x0 + c + 0.5, y0 + r + 0.5, labels.get((r, c), f"{v:g}"), ha="center",
            va="center", fontsize=8)


def _step_panel(ax, image: np.ndarray, kernel: np.ndarray, out: np.ndarray, p: int,
                q: int) -> None:
  """One step: the window at output (p, q), its products, their sum entering the output map."""
  kh, kw = kernel.shape
  window = {(p + i, q + j): (i, j) for i in range(kh) for j in range(kw)}
  labels = {rc: f"{image[rc]:g}$_{{\\times{kernel[ij]:g}}}$" for rc, ij in window.items()}
  _cells(ax, image, 0, 0, {rc: "#ffd27f" for rc in window}, labels)
  ox = image.shape[1] + 1.5
  oy = (image.shape[0] - out.shape[0]) / 2
  done = {(r, c): "#cfe8ff" for r in range(out.shape[0]) for c in range(out.shape[1])
          if (r, c) <= (p, q)}
  done[(p, q)] = "#ffd27f"
  shown = {rc: (f"{out[rc]:g}" if rc in done else "") for rc in np.ndindex(out.shape)}
  _cells(ax, out, ox, oy, done, shown)
  ax.annotate("", xy=(ox - 0.1, oy + p + 0.5), xytext=(image.shape[1] + 0.1, p + kh / 2),
              arrowprops=dict(arrowstyle="->", color="darkorange"))
  products = " + ".join(f"{image[rc]:g}·{kernel[ij]:g}" for rc, ij in window.items())
  ax.text(0, image.shape[0] + 0.7, f"{products} = {out[p, q]:g}", fontsize=6.5, va="center")
  ax.set_xlim(-0.2, ox + out.shape[1] + 0.2)
  ax.set_ylim(image.shape[0] + 1.1, -0.2)
  ax.set_aspect("equal")
  ax.axis("off")


def plot_convolution_steps(path: str, image: np.ndarray = NOTES_IMAGE,
                           kernel: np.ndarray = NOTES_FILTER) -> str:
  """One panel per output position: the window, the products and the sum they give.

  Args:
    path: output PNG; with the notes' 5 x 5 image and 3 x 3 filter, 1200 x 855 pixels
      (OW * 400 x OH * 260 + 75 in general).
    image: (H, W) small image (single digits read best).
    kernel: (KH, KW) filter.

  Returns:
    `path`.
  """
  out = convolve_by_hand(image, kernel)
  kernel_text = "[" + "; ".join(" ".join(f"{v:g}" for v in row) for row in kernel) + "]"
  fig, axes = figures.grid(
      out.shape[0], out.shape[1], panel=(4.0, 2.6),
      title=f"Convolution by hand: slide the filter {kernel_text} over the image,\n"
            "multiply elementwise (small numbers: the filter's weights) and add up")
  for (p, q), ax in np.ndenumerate(axes):
    _step_panel(ax, image, kernel, out, p, q)
  return figures.save(fig, path)
