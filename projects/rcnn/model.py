"""R-CNN (Girshick, Donahue, Darrell & Malik 2014, "Rich feature hierarchies for accurate object
detection and semantic segmentation"): the readable reference detector.

1. Region proposals: about 2000 class-agnostic boxes per image (about 200 on 64x64 scenes) from
   selective search (`projects.rcnn.selective_search`, numpy, computed once per image).
2. Warp: each box is dilated so that, once warped, it has `padding` pixels of image context on
   every side (p = 16 at 227 px in the paper), and the image inside it is resized
   (bilinearly, ignoring the aspect ratio) to a fixed `crop_size` square (`warp_crops`).
   Outside the image the crop is 0, the mean of a normalised image: the paper's mean padding.
3. CNN features: any backbone runs on each crop, built without its classifier; the vector the
   classifier would have read, its `pre_logits`, is the region's feature (AlexNet's fc7 in the
   paper: AlexNet and VGG keep fc6/fc7 here, `fc_in_trunk`).
4. Classify and refine: a (K + 1)-way softmax (0 = background) and class-specific box deltas
   (`vision_jax.ops.boxes.encode`), then class-wise NMS (`detect`).

Training (`label_proposals`, `sample_rois`, `loss`; matching and balanced sampling are
Faster R-CNN's, from `detection_targets`) follows the paper's fine-tuning: proposals
(plus the ground-truth boxes) with IoU >= 0.5 to a ground-truth box take its class, the rest are
background; mini-batches hold 25% foreground (32 of 128 in the paper); box regression learns
from proposals with IoU >= 0.6. Deviations: the paper trains linear SVMs on fc7 features after
fine-tuning (with hard negative mining) and a separate ridge regressor on pool5 features; here
the fine-tuned softmax scores the regions and a linear layer on the same features regresses the
boxes, trained jointly with a smooth L1 loss (Fast R-CNN's simplification), end to end.

Everything is jax with static shapes: a fixed number of proposals per image, padded, with a
validity mask, so training and inference are jit-compiled once.
"""

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from vision_jax import models
from vision_jax.models import backbone as backbone_lib
from vision_jax.models import precision
from vision_jax.ops import boxes as box_ops
from vision_jax.ops import roi_align
from vision_jax.tasks.detection import targets as detection_targets

BACKGROUND = 0  # Class 0 of the logits; object class c is logit c + 1.
IGNORE = -1  # Label of padding proposals: no loss.
# The paper's warp: 227x227 crops with 16 pixels of context (Sec. 2.1 and Appendix A).
PAPER_CROP_SIZE, PAPER_PADDING = 227, 16


def context_boxes(boxes: jax.Array, crop_size: int, padding: int) -> jax.Array:
  """Dilates (..., 4) boxes about their centres so that, warped to `crop_size`, the original box
  fills the central `crop_size - 2 * padding` pixels: `padding` pixels of context each side."""
  if not 0 <= 2 * padding < crop_size:
    raise ValueError(f"padding={padding} must be >= 0 and leave room in crop_size={crop_size} "
                     f"(2 * padding < crop_size)")
  scale = crop_size / (crop_size - 2 * padding)
  centre = (boxes[..., :2] + boxes[..., 2:]) / 2
  half = (boxes[..., 2:] - boxes[..., :2]) * (scale / 2)
  return jnp.concatenate([centre - half, centre + half], axis=-1)


def warp_crops(images: jax.Array, boxes: jax.Array, crop_size: int, padding: int) -> jax.Array:
  """R-CNN's "warped regions": every box, with context, resized to a fixed square.

  The resize is bilinear with one sample per output pixel, at its centre (RoIAlign with
  `sampling_ratio=1` on the image itself); no anti-aliasing, like the paper's warp. Samples
  more than one pixel outside the image are 0; those within one pixel take the border value
  (RoIAlign's rule).

  Args:
    images: (B, H, W, C) normalised images (0 = mean colour, which pads outside the image).
    boxes: (B, R, 4) boxes (ymin, xmin, ymax, xmax) in pixels.
    crop_size: S, the side of the warped crops.
    padding: context pixels around the box in the warped crop (p).

  Returns:
    (B, R, S, S, C) crops.
  """
  dilated = context_boxes(boxes, crop_size, padding)  # (B, R, 4)
  return roi_align.roi_align(images, dilated, crop_size, spatial_scale=1.0, sampling_ratio=1)


class RCNN(nn.Module):
  """Scores warped region crops: a headless backbone, then classification and box heads.

  Attributes:
    num_classes: K object classes; the logits have K + 1 (index 0 is background).
    backbone: a registry name, a Module or a constructor (`backbone.build`), built without its
      classifier; its `pre_logits` (B, D) is the region feature. Registry models with fc6/fc7
      (AlexNet, ZFNet, VGG) keep them (`fc_in_trunk=True` unless `backbone_kwargs` says
      otherwise), so the feature is fc7's, as in the paper.
    backbone_kwargs: other fields of the backbone (e.g. `features` of a SimpleCNN).
    dtype: computation dtype; the outputs are float32.
    param_dtype: parameter dtype.
  """

  num_classes: int
  backbone: backbone_lib.Backbone
  backbone_kwargs: flax.core.FrozenDict = flax.core.FrozenDict()
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, crops: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    """Classifies regions and regresses their boxes.

    Args:
      crops: (R, S, S, C) warped crops (any leading batch shape is flattened and restored).
      train: backbone BatchNorm and dropout in training mode.

    Returns:
      `(logits, deltas)`: (R, K + 1) float32 class logits and (R, K, 4) float32 box deltas
      (dy, dx, dh, dw) per object class, to decode against the region's box.
    """
    lead = crops.shape[:-3]
    crops = crops.reshape(-1, *crops.shape[-3:])  # (R, S, S, C)
    kwargs = dict(self.backbone_kwargs)
    if isinstance(self.backbone, str) and "fc_in_trunk" in (
        models.model_fields(self.backbone) or ()):
      kwargs.setdefault("fc_in_trunk", True)  # The paper's region feature: fc7.
    backbone = backbone_lib.build(self.backbone, dtype=self.dtype, param_dtype=self.param_dtype,
                                  **kwargs)
    _, features = backbone(crops, train=train)
    if "pre_logits" not in features:
      raise ValueError(f"Backbone {backbone_lib.describe(self.backbone)} has no "
                       f"features['pre_logits'] to read region features from; its features: "
                       f"{sorted(features)}.")
    x = features["pre_logits"]  # (R, D)
    dense = lambda n, name, std: nn.Dense(  # noqa: E731
        n, kernel_init=nn.initializers.normal(std), dtype=self.dtype,
        param_dtype=self.param_dtype, name=name)
    # Fast R-CNN's initialisation: small random classifier, smaller box regressor.
    logits = dense(self.num_classes + 1, "cls_score", 0.01)(x)  # (R, K + 1)
    deltas = dense(self.num_classes * 4, "bbox_pred", 0.001)(x)  # (R, 4K)
    out = precision.output_dtype(self.dtype)  # float32, or float64 in float64 mode.
    logits = logits.astype(out).reshape(*lead, self.num_classes + 1)
    deltas = deltas.astype(out).reshape(*lead, self.num_classes, 4)
    return logits, deltas


def label_proposals(proposals: jax.Array, valid: jax.Array, gt_boxes: jax.Array,
                    gt_labels: jax.Array, gt_valid: jax.Array, foreground_iou: float = 0.5,
                    regression_iou: float = 0.6) -> dict[str, jax.Array]:
  """Training labels of one image's proposals.

  Args:
    proposals: (R, 4) pixels.
    valid: (R,) bool, False for padding.
    gt_boxes: (G, 4) ground-truth boxes, pixels.
    gt_labels: (G,) int object classes in [0, K).
    gt_valid: (G,) bool, False for padding.
    foreground_iou: a proposal whose best IoU with a ground-truth box is >= this takes that
      box's class; the others are background (0.5: the paper's fine-tuning).
    regression_iou: proposals with best IoU >= this learn box deltas towards that box (0.6).

  Returns:
    {"labels": (R,) int32 (IGNORE = -1 for padding, BACKGROUND = 0, 1 + c for class c),
     "targets": (R, 4) `box_ops.encode` deltas towards the matched box (zeros where not
     regressed), "regress": (R,) bool, "iou": (R,) best IoU (-1 without ground truth)}.
  """
  if gt_boxes.shape[0] == 0:
    raise ValueError("gt_boxes needs at least one row (static shapes): pad images without "
                     "objects with a box whose gt_valid is False.")
  best_iou, best = detection_targets.match(proposals, gt_boxes, gt_valid)  # (R,), (R,)
  labels = jnp.where(best_iou >= foreground_iou, gt_labels[best] + 1, BACKGROUND)
  labels = jnp.where(valid, labels, IGNORE).astype(jnp.int32)
  regress = valid & (best_iou >= regression_iou)
  # Padding proposals may be empty boxes; encode against a safe box where not regressed.
  safe = jnp.where(regress[:, None], proposals, jnp.asarray([0.0, 0.0, 1.0, 1.0]))
  targets = box_ops.encode(gt_boxes[best], safe)
  targets = jnp.where(regress[:, None], targets, 0.0)
  return {"labels": labels, "targets": targets, "regress": regress, "iou": best_iou}


def sample_rois(key: jax.Array, labels: jax.Array, num_samples: int,
                positive_fraction: float = 0.25) -> tuple[jax.Array, jax.Array]:
  """A random mini-batch of regions: up to `positive_fraction` foreground, the rest background.

  Args:
    key: PRNG key.
    labels: (R,) from `label_proposals` (IGNORE regions are never picked).
    num_samples: N regions to return (static).
    positive_fraction: most foreground regions, as a fraction of N (the paper: 32 / 128).

  Returns:
    `(indices, valid)`: (N,) int32 indices into the R regions, foreground first, and (N,) bool,
    False where there were too few regions to fill the batch.
  """
  if num_samples > labels.shape[0]:
    raise ValueError(f"num_samples={num_samples} exceeds the {labels.shape[0]} regions.")
  take_pos, take_neg = detection_targets.sample_balanced(
      key, labels > 0, labels == BACKGROUND, num_samples, positive_fraction)  # (R,) each
  priority = jnp.where(take_pos, 2, jnp.where(take_neg, 1, 0))
  order = jnp.argsort(-priority, stable=True)[:num_samples]  # Picked regions first.
  return order.astype(jnp.int32), priority[order] > 0


def loss(logits: jax.Array, deltas: jax.Array, labels: jax.Array, targets: jax.Array,
         regress: jax.Array, valid: jax.Array,
         box_weight: float = 1.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Softmax cross-entropy over K + 1 classes plus smooth L1 on the true class's deltas.

  Both terms are averaged over the valid regions (Fast R-CNN's normalisation).

  Args:
    logits: (N, K + 1).
    deltas: (N, K, 4).
    labels: (N,) in [0, K] (IGNORE rows must be invalid).
    targets: (N, 4).
    regress: (N,) bool, regions that learn box deltas.
    valid: (N,) bool, regions in the batch.
    box_weight: weight of the box loss.

  Returns:
    The total loss and metrics: `loss`, `cls_loss`, `box_loss`, `accuracy` (over valid
    regions) and `foreground_fraction`.
  """
  valid = valid & (labels >= 0)
  count = jnp.maximum(valid.sum(), 1)
  safe_labels = jnp.maximum(labels, 0)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, safe_labels)  # (N,)
  cls_loss = jnp.sum(jnp.where(valid, ce, 0.0)) / count
  class_deltas = jnp.take_along_axis(
      deltas, jnp.maximum(safe_labels - 1, 0)[:, None, None], axis=1)[:, 0]  # (N, 4)
  smooth_l1 = optax.huber_loss(class_deltas, targets, delta=1.0).sum(-1)  # (N,)
  box_loss = jnp.sum(jnp.where(valid & regress & (labels > 0), smooth_l1, 0.0)) / count
  total = cls_loss + box_weight * box_loss
  correct = (jnp.argmax(logits, -1) == safe_labels) & valid
  return total, {"loss": total, "cls_loss": cls_loss, "box_loss": box_loss,
                 "accuracy": correct.sum() / count,
                 "foreground_fraction": jnp.sum(valid & (labels > 0)) / count}


def detect(logits: jax.Array, deltas: jax.Array, proposals: jax.Array, valid: jax.Array,
           height: float, width: float, score_threshold: float = 0.05,
           iou_threshold: float = 0.3, max_detections: int = 100,
           pre_nms: int = 1000) -> dict[str, jax.Array]:
  """Detections of one image: class-specific boxes, scored, class-wise NMS.

  Args:
    logits: (R, K + 1) region logits.
    deltas: (R, K, 4) box deltas.
    proposals: (R, 4) pixels.
    valid: (R,) bool, False for padding proposals.
    height, width: the image size, to clip boxes.
    score_threshold: class probabilities not above this are dropped (0.05: Fast R-CNN).
    iou_threshold: NMS threshold within a class (0.3 in the R-CNN code).
    max_detections: D, static number of outputs.
    pre_nms: only the best this many (region, class) pairs enter NMS, for speed.

  Returns:
    {"boxes": (D, 4) pixels, "scores": (D,), "labels": (D,) int32 in [0, K), "valid": (D,)
    bool}, by decreasing score.
  """
  num_regions, num_classes = deltas.shape[:2]
  probs = jax.nn.softmax(logits, axis=-1)[:, 1:]  # (R, K), background dropped
  boxes = box_ops.decode(deltas, proposals[:, None, :])  # (R, K, 4)
  boxes = box_ops.clip(boxes, height, width).reshape(-1, 4)  # (R K, 4)
  scores = jnp.where(valid[:, None], probs, -jnp.inf).reshape(-1)  # (R K,)
  classes = jnp.tile(jnp.arange(num_classes, dtype=jnp.int32), num_regions)  # (R K,)
  scores, top = jax.lax.top_k(scores, min(pre_nms, scores.shape[0]))
  boxes, classes = boxes[top], classes[top]
  keep, ok = box_ops.batched_nms(boxes, scores, classes, iou_threshold, max_detections,
                                 score_threshold)
  return {"boxes": jnp.where(ok[:, None], boxes[keep], 0.0),
          "scores": jnp.where(ok, scores[keep], 0.0),
          "labels": jnp.where(ok, classes[keep], 0), "valid": ok}
