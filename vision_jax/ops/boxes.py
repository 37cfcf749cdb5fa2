"""Box geometry in jax.numpy: areas, IoU, the R-CNN box coding, clipping and static-shape NMS.

Boxes are (..., 4) arrays `(ymin, xmin, ymax, xmax)`, the order TFDS stores them in, in any
consistent unit (pixels or [0, 1]); a box's height is `ymax - ymin` (no "+1": coordinates are
continuous, as in Detectron2 and torchvision). Everything has static shapes and works under
`jax.jit` and `jax.vmap`: NMS returns a fixed number of indices with a validity mask.
"""

import math

import jax
import jax.numpy as jnp

# Faster R-CNN's weights of (dy, dx, dh, dw): the box regression targets are scaled so that
# they have roughly unit variance (Detectron's BBOX_REG_WEIGHTS).
DEFAULT_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
# Largest log-scale change `decode` applies (Detectron's clamp: boxes grow at most 1000/16 x).
SCALE_CLAMP = math.log(1000.0 / 16)


def area(boxes: jax.Array) -> jax.Array:
  """(..., 4) → (...) areas; inverted boxes (ymax < ymin) count as 0."""
  h = jnp.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
  w = jnp.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
  return h * w


def pairwise_iou(a: jax.Array, b: jax.Array) -> jax.Array:
  """Intersection over union of every pair: a (N, 4), b (M, 4) → (N, M).

  A pair whose union is empty (two empty boxes) has IoU 0.
  """
  top_left = jnp.maximum(a[:, None, :2], b[None, :, :2])  # (N, M, 2)
  bottom_right = jnp.minimum(a[:, None, 2:], b[None, :, 2:])  # (N, M, 2)
  size = jnp.maximum(bottom_right - top_left, 0.0)
  inter = size[..., 0] * size[..., 1]  # (N, M)
  union = area(a)[:, None] + area(b)[None, :] - inter
  return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


def _centres_and_sizes(boxes: jax.Array) -> tuple[jax.Array, ...]:
  h = boxes[..., 2] - boxes[..., 0]
  w = boxes[..., 3] - boxes[..., 1]
  return boxes[..., 0] + 0.5 * h, boxes[..., 1] + 0.5 * w, h, w


def encode(boxes: jax.Array, anchors: jax.Array,
           weights: tuple[float, float, float, float] = DEFAULT_WEIGHTS) -> jax.Array:
  """Regression targets that turn `anchors` into `boxes` (R-CNN, Girshick et al. 2014, App. C).

  `dy = wy (y - ya) / ha`, `dx = wx (x - xa) / wa`, `dh = wh log(h / ha)`, `dw = ww log(w / wa)`,
  with (y, x) box centres and (h, w) sizes.

  Args:
    boxes: (..., 4) target boxes.
    anchors: (..., 4) reference boxes (anchors or proposals), broadcastable to `boxes`; they
      must have positive sizes.
    weights: (wy, wx, wh, ww) scales of the four deltas.

  Returns:
    (..., 4) deltas (dy, dx, dh, dw).
  """
  y, x, h, w = _centres_and_sizes(boxes)
  ya, xa, ha, wa = _centres_and_sizes(anchors)
  tiny = 1e-6  # Degenerate (empty) boxes give large, finite targets instead of -inf.
  wy, wx, wh, ww = weights
  return jnp.stack([wy * (y - ya) / ha, wx * (x - xa) / wa,
                    wh * jnp.log(jnp.maximum(h, tiny) / ha),
                    ww * jnp.log(jnp.maximum(w, tiny) / wa)], axis=-1)


def decode(deltas: jax.Array, anchors: jax.Array,
           weights: tuple[float, float, float, float] = DEFAULT_WEIGHTS) -> jax.Array:
  """The inverse of `encode`: applies (..., 4) deltas to (..., 4) anchors → (..., 4) boxes.

  The log-scale deltas are clamped at `SCALE_CLAMP` first, so early, untrained predictions
  cannot overflow `exp`.
  """
  ya, xa, ha, wa = _centres_and_sizes(anchors)
  wy, wx, wh, ww = weights
  dy, dx = deltas[..., 0] / wy, deltas[..., 1] / wx
  dh = jnp.minimum(deltas[..., 2] / wh, SCALE_CLAMP)
  dw = jnp.minimum(deltas[..., 3] / ww, SCALE_CLAMP)
  y, x = ya + dy * ha, xa + dx * wa
  h, w = ha * jnp.exp(dh), wa * jnp.exp(dw)
  return jnp.stack([y - 0.5 * h, x - 0.5 * w, y + 0.5 * h, x + 0.5 * w], axis=-1)


def clip(boxes: jax.Array, height: float, width: float) -> jax.Array:
  """Clips (..., 4) boxes to the image [0, height] x [0, width]."""
  limits = jnp.asarray([height, width, height, width], boxes.dtype)
  return jnp.clip(boxes, 0.0, limits)


def nms(boxes: jax.Array, scores: jax.Array, iou_threshold: float, max_outputs: int,
        score_threshold: float = -jnp.inf) -> tuple[jax.Array, jax.Array]:
  """Greedy non-maximum suppression with static shapes.

  Visits boxes by decreasing score; keeps a box unless a kept box overlaps it with IoU above
  `iou_threshold`. Boxes whose score is not above `score_threshold` (e.g. padding with score
  -inf) are never kept and never suppress others. Ties in score keep the lower index first.

  Args:
    boxes: (N, 4).
    scores: (N,).
    iou_threshold: a box is suppressed by a kept one with IoU > this.
    max_outputs: the static number of outputs.
    score_threshold: only boxes scoring above it are candidates.

  Returns:
    `(indices, valid)`: (max_outputs,) int32 indices into `boxes` of the kept boxes by
    decreasing score, and (max_outputs,) bool, False for the padding after the last kept box
    (its index is 0).
  """
  n = boxes.shape[0]
  order = jnp.argsort(-scores, stable=True)  # (N,) best first
  sorted_boxes = boxes[order]
  candidate = scores[order] > score_threshold  # (N,)
  overlaps = pairwise_iou(sorted_boxes, sorted_boxes) > iou_threshold  # (N, N)
  later = jnp.arange(n)[None, :] > jnp.arange(n)[:, None]  # Only suppress lower scores.
  overlaps = overlaps & later

  def visit(i, keep):
    # `keep` starts as the candidates; box i, if still kept, removes what it overlaps.
    return keep & ~(keep[i] & overlaps[i])

  keep = jax.lax.fori_loop(0, n, visit, candidate)  # (N,) in sorted order
  (positions,) = jnp.nonzero(keep, size=max_outputs, fill_value=0)
  valid = jnp.arange(max_outputs) < keep.sum()
  return jnp.where(valid, order[positions], 0).astype(jnp.int32), valid


def batched_nms(boxes: jax.Array, scores: jax.Array, classes: jax.Array, iou_threshold: float,
                max_outputs: int,
                score_threshold: float = -jnp.inf) -> tuple[jax.Array, jax.Array]:
  """Class-aware NMS: boxes of different classes never suppress each other.

  Each class's boxes are shifted by its own offset, larger than every coordinate, so boxes of
  different classes never overlap, and one `nms` runs over all of them (torchvision's trick).

  Args:
    boxes: (N, 4).
    scores: (N,).
    classes: (N,) int class of each box.
    iou_threshold, max_outputs, score_threshold: as in `nms`.

  Returns:
    `(indices, valid)` as `nms`.
  """
  span = jnp.max(jnp.abs(boxes)) + 1.0
  shifted = boxes + (classes.astype(boxes.dtype) * 2.0 * span)[:, None]
  return nms(shifted, scores, iou_threshold, max_outputs, score_threshold)
