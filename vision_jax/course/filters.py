"""Classic hand-made 3 x 3 filters (sharpen, edge detect, ...) applied to a real image.

Before CNNs learned their filters, people designed them; these are the course notes' examples
("Producing feature maps": sharpen, edge detect, "strong" edge detect), plus a box blur.
"""

import numpy as np

from vision_jax import errors, figures

CLASSIC_FILTERS = {
    "sharpen": np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], np.float32),
    "edge detect": np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float32),
    "strong edge detect": np.array([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]], np.float32),
    "box blur": np.full((3, 3), 1 / 9, np.float32),
}


def apply_filter(image: np.ndarray, kernel: np.ndarray, pad_mode: str = "edge") -> np.ndarray:
  """Same-size 2-D convolution (CNN-style cross-correlation) of a greyscale image.

  Vectorised: one shifted copy of the padded image per kernel weight, so a 3 x 3 filter costs 9
  array multiply-adds. Equal to `convolution.convolve_by_hand(image, kernel, padding=k // 2)`
  with `pad_mode="constant"` (zeros).

  Args:
    image: (H, W).
    kernel: (K, K), K odd.
    pad_mode: how `np.pad` extends the border; "edge" repeats it, so borders stay dark under
      edge detectors instead of lighting up against an imaginary black frame.

  Returns:
    (H, W) float32, unclipped.
  """
  k = kernel.shape[0]
  h, w = image.shape
  padded = np.pad(np.asarray(image, np.float32), k // 2, mode=pad_mode)  # (H + K - 1, W + K - 1)
  out = np.zeros((h, w), np.float32)
  for i in range(k):
    for j in range(k):
      out += kernel[i, j] * padded[i:i + h, j:j + w]
  return out


def _matrix_text(kernel: np.ndarray) -> str:
  """[0 -1 0; -1 5 -1; 0 -1 0]: rows separated by semicolons."""
  return "[" + "; ".join(" ".join(f"{v:.2g}" for v in row) for row in kernel) + "]"


def plot_filters(image: np.ndarray, path: str,
                 names: tuple[str, ...] = ("sharpen", "edge detect", "strong edge detect"),
                 title: str = "") -> str:
  """The image and its filtered versions side by side, each filter's weights above it.

  Outputs are clipped to [0, 255], as an image editor shows them: negative responses are black.

  Args:
    image: (H, W) uint8 greyscale.
    path: output PNG, (1 + len(names)) * 300 x 400 pixels.
    names: keys of `CLASSIC_FILTERS`.
    title: figure title.

  Returns:
    `path`.

  Raises:
    ValueError: for an unknown filter name, naming the valid ones.
  """
  unknown = [n for n in names if n not in CLASSIC_FILTERS]
  if unknown:
    raise errors.UserError(f"Unknown filters {unknown}; valid choices: {list(CLASSIC_FILTERS)}")
  fig, axes = figures.grid(1, 1 + len(names), panel=(3.0, 3.5),
                           title=title or "Producing feature maps with hand-made filters")
  figures.show(axes[0, 0], image, title="original", vmin=0, vmax=255)
  for ax, name in zip(axes[0, 1:], names):
    kernel = CLASSIC_FILTERS[name]
    figures.show(ax, np.clip(apply_filter(image, kernel), 0, 255),
                 title=f"{name}\n{_matrix_text(kernel)}", vmin=0, vmax=255)
  return figures.save(fig, path)
