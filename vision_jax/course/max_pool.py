"""Max pooling illustrated: each 2 x 2 window of a 4 x 4 map keeps only its largest value."""

import matplotlib.patches
import numpy as np

from vision_jax import figures

# The course notes' example: max pool with 2x2 filters and stride 2 gives [[6, 8], [3, 4]].
NOTES_INPUT = np.array([
    [1, 1, 2, 4],
    [5, 6, 7, 8],
    [3, 2, 1, 0],
    [1, 2, 3, 4],
], np.float32)
_WINDOW_COLOURS = ("#f4a6a6", "#a6d8f4", "#f4e3a6", "#b9f4a6")


def max_pool_by_hand(x: np.ndarray, window: int = 2) -> np.ndarray:
  """Non-overlapping max pooling of an (H, W) map, stride = window, as loops.

  Returns:
    (H // window, W // window); rows and columns past the last full window are dropped.
  """
  out = np.zeros((x.shape[0] // window, x.shape[1] // window), x.dtype)
  for p in range(out.shape[0]):
    for q in range(out.shape[1]):
      out[p, q] = x[p * window:(p + 1) * window, q * window:(q + 1) * window].max()
  return out


def _draw(ax, values: np.ndarray, colour_of, bold, margin: float = 0.0) -> None:
  """Coloured cells with values; `margin` cells of blank space on every side."""
  for (r, c), v in np.ndenumerate(values):
    ax.add_patch(matplotlib.patches.Rectangle((c, r), 1, 1, facecolor=colour_of(r, c),
                                              edgecolor="white", linewidth=2))
    ax.text(c + 0.5, r + 0.5, f"{v:g}", ha="center", va="center", fontsize=16,
            fontweight="bold" if bold(r, c) else "normal")
  ax.set_xlim(-margin, values.shape[1] + margin)
  ax.set_ylim(values.shape[0] + margin, -margin)
  ax.set_aspect("equal")
  ax.axis("off")


def plot_max_pool(path: str, x: np.ndarray = NOTES_INPUT, window: int = 2) -> str:
  """The input with its windows coloured (each maximum in bold) and the pooled output.

  Args:
    path: output PNG, 800 x 475 pixels.
    x: (H, W) small map.
    window: pooling window and stride.

  Returns:
    `path`.
  """
  out = max_pool_by_hand(x, window)

  def colour(p, q):  # Output cell (p, q) and the window it comes from share a colour.
    return _WINDOW_COLOURS[(p * out.shape[1] + q) % len(_WINDOW_COLOURS)]

  def is_max(r, c):
    p, q = r // window, c // window
    return p < out.shape[0] and q < out.shape[1] and x[r, c] == out[p, q]

  fig, axes = figures.grid(1, 2, panel=(4.0, 4.0), title=(
      f"Max pooling, {window}x{window} windows, stride {window}: fewer numbers, and a feature "
      "may move a little\nwithin its window without changing the output"))
  _draw(axes[0, 0], x, lambda r, c: colour(r // window, c // window), is_max)
  axes[0, 0].set_title(f"input {x.shape[0]} x {x.shape[1]}", fontsize=10)
  # Same cell size as the input, so the output looks as much smaller as it is.
  _draw(axes[0, 1], out, colour, lambda r, c: True, margin=(x.shape[0] - out.shape[0]) / 2)
  axes[0, 1].set_title(f"output {out.shape[0]} x {out.shape[1]}", fontsize=10)
  return figures.save(fig, path)
