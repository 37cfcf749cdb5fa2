"""Eval images with their generated and reference captions, and where the decoder looked."""

import os
import textwrap

import matplotlib

matplotlib.use("Agg")  # Files only; never needs a display.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from vision_jax import figures  # noqa: E402


def _upsample(cells: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """(N,) attention over a square grid → (H, W), bilinear, scaled to [0, 1]."""
  side = int(round(np.sqrt(cells.size)))
  grid = cells.reshape(side, side).astype(np.float32)
  grid = grid / max(float(grid.max()), 1e-8)
  return np.asarray(Image.fromarray(grid).resize(size[::-1], Image.BILINEAR))


def plot_captions(images: list[np.ndarray], generated: list[str], references: list[str],
                  path: str, attention: np.ndarray | None = None,
                  words: list[list[str]] | None = None, max_words: int = 5) -> str:
  """One row per image: the image with both captions, then attention maps per word.

  Args:
    images: (H, W, C) uint8 images.
    generated: the model's caption of each image.
    references: a reference caption of each image.
    path: output PNG file (its directory is created).
    attention: (N, L, cells) greedy attention weights over a square grid, or None.
    words: the generated words of each image (the attention's steps).
    max_words: attention panels per row.

  Returns:
    `path`.
  """
  columns = 1 + (max_words if attention is not None else 0)
  fig, axes = plt.subplots(len(images), columns, figsize=(2.2 * columns + 2.5,
                                                          2.4 * len(images)), squeeze=False)
  for row, image in enumerate(images):
    shown = image[..., 0] if image.shape[-1] == 1 else image
    ax = axes[row, 0]
    ax.imshow(shown, cmap="gray" if image.shape[-1] == 1 else None)
    ax.set_title("\n".join(textwrap.wrap(f"model: {generated[row]}", 34)
                           + textwrap.wrap(f"truth: {references[row]}", 34)),
                 fontsize=7, loc="left")
    for col in range(1, columns):
      ax = axes[row, col]
      step = col - 1
      if words is not None and step < len(words[row]):
        heat = _upsample(attention[row, step], image.shape[:2])
        ax.imshow(np.clip(figures.overlay(image, heat), 0, 1))
        ax.set_title(words[row][step], fontsize=8)
    for ax in axes[row]:
      ax.axis("off")
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return path
