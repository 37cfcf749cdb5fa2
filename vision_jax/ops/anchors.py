"""Anchor boxes of a region proposal network (Ren et al. 2015, Sec. 3.1.1), as a numpy constant.

At every cell of a feature map of stride s, anchors of each size and aspect ratio are centred
on the cell's centre ((i + 0.5) s, (j + 0.5) s) in image pixels. Their order is (row, column,
anchor), the order in which an RPN head's (B, Hf, Wf, A) outputs flatten.
"""

from collections.abc import Sequence

import numpy as np


def cell_anchors(sizes: Sequence[float], ratios: Sequence[float]) -> np.ndarray:
  """(A, 4) anchors centred at 0: every size (square root of the area, pixels) at every
  aspect ratio `height / width`, size-major ((s0, r0), (s0, r1), ...)."""
  out = []
  for size in sizes:
    for ratio in ratios:
      h, w = size * np.sqrt(ratio), size / np.sqrt(ratio)
      out.append((-h / 2, -w / 2, h / 2, w / 2))
  return np.asarray(out, np.float32)


def grid_anchors(height: int, width: int, stride: float, sizes: Sequence[float],
                 ratios: Sequence[float]) -> np.ndarray:
  """Anchors of a (height, width) feature map at `stride`.

  Args:
    height, width: the feature map's size in cells.
    stride: image pixels per cell.
    sizes: anchor sizes (square root of the area) in image pixels.
    ratios: aspect ratios, height / width.

  Returns:
    (height * width * A, 4) float32 boxes (ymin, xmin, ymax, xmax) in image pixels,
    A = len(sizes) * len(ratios).
  """
  ys = (np.arange(height, dtype=np.float32) + 0.5) * stride
  xs = (np.arange(width, dtype=np.float32) + 0.5) * stride
  cy, cx = np.meshgrid(ys, xs, indexing="ij")  # (H, W)
  centres = np.stack([cy, cx, cy, cx], axis=-1)  # (H, W, 4)
  base = cell_anchors(sizes, ratios)  # (A, 4)
  return (centres[:, :, None, :] + base[None, None]).reshape(-1, 4)
