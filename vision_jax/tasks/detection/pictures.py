"""Detection pictures: per image, the ground-truth boxes and the predicted boxes with scores."""

import os
from collections.abc import Sequence

import matplotlib.patches as mpatches
import numpy as np

from vision_jax import figures


def _draw_boxes(ax, boxes: np.ndarray, labels: np.ndarray, colours: np.ndarray,
                class_names: Sequence[str], scores: np.ndarray | None = None) -> None:
  """Rectangles (pixel boxes ymin, xmin, ymax, xmax) with their class (and score) above."""
  for i, (box, label) in enumerate(zip(boxes, labels)):
    y0, x0, y1, x1 = box
    colour = colours[int(label) + 1]  # Colour 0 is the background's.
    # Pixel i covers [i - 0.5, i + 0.5] in imshow's coordinates.
    ax.add_patch(mpatches.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                                    edgecolor=colour, linewidth=1.5))
    text = class_names[int(label)] + ("" if scores is None else f" {scores[i]:.2f}")
    ax.text(x0 - 0.5, y0 - 0.5, text, color="black", fontsize=6, va="bottom",
            bbox=dict(facecolor=colour, edgecolor="none", pad=0.5, alpha=0.8))


def plot_detections(images: Sequence[np.ndarray], truths: Sequence[dict],
                    detections: Sequence[dict], class_names: Sequence[str], path: str,
                    title: str = "", min_score: float = 0.3) -> str:
  """One row per image: ground truth | predictions scoring at least `min_score`.

  Args:
    images: B images (H, W, C) uint8.
    truths: per image {"boxes" (m, 4) pixels (ymin, xmin, ymax, xmax), "labels" (m,)}.
    detections: per image {"boxes" (n, 4), "labels" (n,), "scores" (n,)}.
    class_names: a name per class (labels index them).
    path: output PNG: 2 columns of 250 pixels and B rows of 250 pixels, plus the title band.
    title: figure title.
    min_score: predictions below it are not drawn.

  Returns:
    `path`.
  """
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  colours = figures.class_colours(len(class_names) + 1)
  fig, axes = figures.grid(len(images), 2, panel=(2.5, 2.5), title=title)
  for row, image, truth, det in zip(axes, images, truths, detections):
    figures.show(row[0], image, title=f"ground truth ({len(truth['labels'])})")
    _draw_boxes(row[0], np.asarray(truth["boxes"]), np.asarray(truth["labels"]), colours,
                class_names)
    shown = np.asarray(det["scores"]) >= min_score
    figures.show(row[1], image, title=f"predicted, score >= {min_score} ({shown.sum()})")
    _draw_boxes(row[1], np.asarray(det["boxes"])[shown], np.asarray(det["labels"])[shown],
                colours, class_names, np.asarray(det["scores"])[shown])
  return figures.save(fig, path)
