"""Semantic segmentation metrics from a confusion matrix summed over the whole eval set.

Eval steps return a (K, K) confusion matrix of pixel counts (rows: true class, columns:
predicted) and loss sums; adding them over batches, devices and hosts is exact, and `finalize`
turns the totals into metrics once, as the FCN paper defines them (Sec. 5), with n_ij the pixels
of class i predicted as j and t_i = sum_j n_ij:

- pixel accuracy  sum_i n_ii / sum_i t_i
- mean accuracy   (1 / K) sum_i n_ii / t_i
- mean IoU        (1 / K) sum_i n_ii / (t_i + sum_j n_ji - n_ii)

Classes that appear neither in the labels nor in the predictions have no IoU (0 / 0) and are
left out of the means rather than counted as 0 or 1.
"""

import jax
import jax.numpy as jnp
import numpy as np


def confusion_matrix(labels: jax.Array, predictions: jax.Array, valid: jax.Array,
                     num_classes: int) -> jax.Array:
  """Counts pixels by (true class, predicted class).

  Args:
    labels: (...) int true classes; any value where `valid` is False.
    predictions: (...) int predicted classes in [0, num_classes).
    valid: (...) bool, the pixels to count (not ignored, not padding).
    num_classes: K.

  Returns:
    (K, K) int32 counts; int32 stays exact up to 2**31 pixels per cell.
  """
  index = jnp.where(valid, labels * num_classes + predictions, num_classes * num_classes)
  counts = jnp.bincount(index.reshape(-1), length=num_classes * num_classes + 1)
  return counts[:-1].reshape(num_classes, num_classes).astype(jnp.int32)  # Drop the invalid bin.


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
  """numerator / denominator, NaN where the denominator is 0."""
  out = np.full(numerator.shape, np.nan)
  np.divide(numerator, denominator, out=out, where=denominator > 0)
  return out


def metrics_from_confusion(confusion: np.ndarray) -> dict:
  """Pixel accuracy, mean class accuracy, mean IoU and per-class IoU (NaN: class absent).

  Args:
    confusion: (K, K) counts, rows true classes, columns predictions.

  Returns:
    `pixel_accuracy`, `mean_accuracy`, `miou` (floats) and `iou` (K,) float64.
  """
  confusion = np.asarray(confusion, np.float64)
  hits = np.diag(confusion)  # (K,) n_ii
  true, predicted = confusion.sum(1), confusion.sum(0)  # (K,) t_i, sum_j n_ji
  iou = _divide(hits, true + predicted - hits)
  accuracy = _divide(hits, true)
  mean = lambda x: float(np.nanmean(x)) if np.any(~np.isnan(x)) else 0.0  # noqa: E731
  return {"pixel_accuracy": float(hits.sum() / max(true.sum(), 1.0)),
          "mean_accuracy": mean(accuracy), "miou": mean(iou), "iou": iou}
