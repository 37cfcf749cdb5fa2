"""Training targets of Faster R-CNN, per image and with static shapes: matching boxes to ground
truth, balanced random sampling, and the losses.

Ground truth is padded to a fixed count M per image: boxes (M, 4) in pixels and labels (M,),
-1 on padding rows. Everything here works on one image; the model `vmap`s it over the batch.
"""

import jax
import jax.numpy as jnp

from vision_jax.ops import boxes as box_ops


def match(candidates: jax.Array, gt_boxes: jax.Array, gt_valid: jax.Array,
          low_quality: bool = False) -> tuple[jax.Array, jax.Array]:
  """Each candidate's best ground-truth box.

  Args:
    candidates: (N, 4) anchors or proposals.
    gt_boxes: (M, 4) ground truth.
    gt_valid: (M,) bool, False on padding.
    low_quality: also return, per candidate, whether it is the best candidate of some ground
      truth box (Faster R-CNN's second positive rule, so that every object gets an anchor).

  Returns:
    `(best_iou, best_gt)`: (N,) float IoU with the best ground truth (-1 without any) and (N,)
    its index; with `low_quality`, `best_iou` is raised to 1 where the candidate is the best
    of some valid ground truth box.
  """
  iou = jnp.where(gt_valid[None, :], box_ops.pairwise_iou(candidates, gt_boxes), -1.0)  # (N, M)
  best_iou, best_gt = iou.max(axis=1), iou.argmax(axis=1)
  if low_quality:
    per_gt = iou.max(axis=0)  # (M,)
    is_best = (iou == per_gt[None, :]) & gt_valid[None, :] & (per_gt[None, :] > 0)  # (N, M)
    best_gt = jnp.where(is_best.any(axis=1), jnp.argmax(is_best, axis=1), best_gt)
    best_iou = jnp.where(is_best.any(axis=1), 1.0, best_iou)
  return best_iou, best_gt


def sample_balanced(key: jax.Array, positive: jax.Array, negative: jax.Array, num: int,
                    positive_fraction: float) -> tuple[jax.Array, jax.Array]:
  """Random subsets of at most `num * positive_fraction` positives, the rest negatives.

  Static shapes: returns masks; where positives run short, more negatives are taken (as
  Detectron2's `subsample_labels`), and where both run short, fewer than `num` are taken.

  Args:
    key: PRNG key.
    positive: (N,) bool.
    negative: (N,) bool, disjoint from `positive`.
    num: boxes to sample.
    positive_fraction: the largest share of positives.

  Returns:
    `(positive_sampled, negative_sampled)`: (N,) bool masks.
  """
  max_pos = int(num * positive_fraction)
  noise = jax.random.uniform(key, positive.shape)  # Random ranks within each group.

  def ranks(mask):  # 0 for the mask's element with the highest noise, 1 for the next, ...
    order = jnp.argsort(jnp.where(mask, -noise, jnp.inf))
    return jnp.zeros(mask.shape, jnp.int32).at[order].set(jnp.arange(mask.size, dtype=jnp.int32))

  take_pos = positive & (ranks(positive) < max_pos)
  num_neg = num - take_pos.sum()
  take_neg = negative & (ranks(negative) < num_neg)
  return take_pos, take_neg


def smooth_l1(x: jax.Array, beta: float) -> jax.Array:
  """Elementwise smooth L1 (Huber / beta): quadratic below `beta`, |x| - beta / 2 above; L1 at 0."""
  ax = jnp.abs(x)
  if beta <= 0:
    return ax
  return jnp.where(ax < beta, 0.5 * ax * ax / beta, ax - 0.5 * beta)


def rpn_targets(key: jax.Array, anchors: jax.Array, gt_boxes: jax.Array, gt_labels: jax.Array,
                *, num: int, positive_fraction: float, positive_iou: float,
                negative_iou: float) -> dict:
  """Objectness labels and box targets of one image's anchors (Ren et al. Sec. 3.1.2).

  Positives: IoU >= `positive_iou` with a ground-truth box, or the best anchor of one.
  Negatives: best IoU < `negative_iou`. A random `num` of them are sampled, at most
  `positive_fraction` positive.

  Returns:
    `objectness` (N,) float 1/0, `weight` (N,) float 1 where sampled, `positive` (N,) bool
    sampled positives, and `deltas` (N, 4) regression targets (weights 1, as Detectron2's RPN).
  """
  valid = gt_labels >= 0
  best_iou, best_gt = match(anchors, gt_boxes, valid, low_quality=True)
  positive = best_iou >= positive_iou
  negative = (best_iou < negative_iou) & ~positive
  pos, neg = sample_balanced(key, positive, negative, num, positive_fraction)
  deltas = box_ops.encode(gt_boxes[best_gt], anchors, weights=(1.0, 1.0, 1.0, 1.0))
  return {"objectness": pos.astype(jnp.float32), "weight": (pos | neg).astype(jnp.float32),
          "positive": pos, "deltas": deltas}


def roi_targets(key: jax.Array, proposals: jax.Array, proposal_valid: jax.Array,
                gt_boxes: jax.Array, gt_labels: jax.Array, *, num: int,
                positive_fraction: float, foreground_iou: float,
                box_weights: tuple[float, ...]) -> dict:
  """Samples one image's RoIs for the box head and their targets (Girshick 2015, Sec. 2.3).

  The ground-truth boxes join the proposals as candidates (so the head sees perfect boxes
  early in training). Foreground: IoU >= `foreground_iou`; background: the rest of the valid
  candidates. `num` are sampled, at most `positive_fraction` foreground.

  Args:
    key: PRNG key.
    proposals: (P, 4) RPN proposals.
    proposal_valid: (P,) bool (False on NMS padding).
    gt_boxes: (M, 4).
    gt_labels: (M,) int in [0, K), -1 on padding.
    num: RoIs per image (static).
    positive_fraction: largest share of foreground RoIs.
    foreground_iou: IoU from which a RoI is foreground.
    box_weights: (wy, wx, wh, ww) of the box coding.

  Returns:
    `rois` (num, 4), `labels` (num,) int (0: background, 1 + class: foreground), `weight`
    (num,) float (0 where too few candidates were left to fill `num`), `deltas` (num, 4)
    regression targets.
  """
  gt_valid = gt_labels >= 0
  filler = max(0, num - proposals.shape[0] - gt_boxes.shape[0])  # Fewer candidates than num.
  candidates = jnp.concatenate([proposals, gt_boxes, jnp.zeros((filler, 4))])  # (P + M, 4)
  valid = jnp.concatenate([proposal_valid, gt_valid, jnp.zeros((filler,), bool)])
  best_iou, best_gt = match(candidates, gt_boxes, gt_valid)
  fg = valid & (best_iou >= foreground_iou)
  bg = valid & ~fg
  take_fg, take_bg = sample_balanced(key, fg, bg, num, positive_fraction)
  taken = take_fg | take_bg
  # The sampled candidates first (foreground, then background), then unsampled filler.
  priority = jnp.where(take_fg, 2, jnp.where(take_bg, 1, 0))
  order = jnp.argsort(-priority, stable=True)[:num]  # (num,)
  rois = candidates[order]
  labels = jnp.where(take_fg[order], gt_labels[best_gt[order]] + 1, 0)
  deltas = box_ops.encode(gt_boxes[best_gt[order]], rois, weights=box_weights)
  # Filler rows may be empty boxes (padding): zero targets, not inf (NaN gradients otherwise).
  deltas = jnp.where(taken[order][:, None], deltas, 0.0)
  return {"rois": rois, "labels": labels.astype(jnp.int32),
          "weight": taken[order].astype(jnp.float32), "deltas": deltas}
