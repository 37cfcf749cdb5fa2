"""Segmentation pictures: image | ground truth | prediction, with a colour legend of the classes."""

import matplotlib.patches as mpatches
import numpy as np

from vision_jax import figures

IGNORE_COLOUR = (1.0, 1.0, 1.0)  # White: pixels that do not count (ignore label, padding).


def colourise(classes: np.ndarray, colours: np.ndarray) -> np.ndarray:
  """(H, W) classes (negative: ignored) → (H, W, 3) uint8 RGB (uint8: drawn unscaled)."""
  out = colours[np.clip(classes, 0, len(colours) - 1)]
  out[classes < 0] = IGNORE_COLOUR
  return np.round(out * 255).astype(np.uint8)


def plot_predictions(images: np.ndarray, labels: np.ndarray, predictions: np.ndarray,
                     class_names, path: str, title: str = "") -> str:
  """One row per image: the image, the true classes, the predicted classes; then a legend.

  Args:
    images: (B, H, W, C) uint8.
    labels: (B, H, W) true classes, negative where ignored (drawn white).
    predictions: (B, H, W) predicted classes.
    class_names: a name per class.
    path: output PNG: 4 columns of 200 pixels (the 4th holds the legend) and B rows of 200
      pixels, plus the title band.
    title: figure title.

  Returns:
    `path`.
  """
  colours = figures.class_colours(len(class_names))
  fig, axes = figures.grid(len(images), 4, panel=(2.0, 2.0), title=title)
  for row, image, label, prediction in zip(axes, images, labels, predictions):
    valid = label >= 0
    accuracy = (prediction == label)[valid].mean() if valid.any() else float("nan")
    figures.show(row[0], image, title="image")
    figures.show(row[1], colourise(label, colours), title="ground truth")
    figures.show(row[2], colourise(prediction, colours),
                 title=f"prediction ({accuracy:.0%} right)")
    row[3].axis("off")
  handles = [mpatches.Patch(color=c, label=f"{i} {name}")
             for i, (c, name) in enumerate(zip(colours, class_names))]
  handles.append(mpatches.Patch(facecolor=IGNORE_COLOUR, edgecolor="black", label="ignored"))
  axes[0, 3].legend(handles=handles, loc="upper left", fontsize=7, frameon=False,
                    borderaxespad=0.0)
  return figures.save(fig, path)
