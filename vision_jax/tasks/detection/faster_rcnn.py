"""Faster R-CNN (Ren, He, Girshick & Sun 2015) over any registry backbone, with static shapes.

    backbone stages ─► neck (1x1 laterals, top-down sum, 3x3) ─► one map, the finest stride
        ├─► RPN: 3x3 conv, per anchor an objectness logit and 4 box deltas
        │     ─► proposals: decode, clip, top-k, NMS, a fixed number per image
        └─► RoIAlign of the proposals (training: a sampled fg/bg mix plus the ground truth)
              ─► 2 dense layers ─► K + 1 class scores and class-specific box deltas
              ─► (eval) per-class decoding, class-aware NMS, a fixed number of detections

Every shape is static: ground truth comes padded to M boxes per image (labels -1 on padding),
proposals and detections come with validity masks, so one compiled step serves every batch.
Training calls the model with the ground truth and gets its four losses back (sampling anchors
and RoIs draws from the `'dropout'` rng, which the train step supplies); evaluation gets
detections. Boxes are (ymin, xmin, ymax, xmax) in pixels of the input image; class ids
(`labels`, as in the ground truth) are 0 .. K - 1 outside the model (the box head's class 0 is
background).

The fields' defaults are the experiment schema's: `config.detection` is made from them
(`hyperparameters`, `vision_jax.tasks.detection.task.default_config`), so a new field is a new
config field with no other line to write.

The backbone (a registry name, a Module or a constructor: `vision_jax.models.backbone`) is built
without its classifier and read through its named `stage<k>` features, as the FCN reads them.
One output map (the neck merges the stages at `feature_strides` into the finest of them)
replaces the paper's single VGG conv5 map; there is no FPN.
"""

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from vision_jax.models import backbone as backbone_lib
from vision_jax.models import precision
from vision_jax.ops import anchors as anchor_ops
from vision_jax.ops import boxes as box_ops
from vision_jax.ops.roi_align import roi_align
from vision_jax.tasks.detection import targets


def propose(logits: jax.Array, deltas: jax.Array, anchors: jax.Array, height: int, width: int,
            pre_nms: int, post_nms: int, nms_iou: float,
            min_size: float) -> tuple[jax.Array, jax.Array]:
  """One image's proposals: decoded anchors, best `pre_nms` by objectness, NMS, `post_nms` kept.

  Args:
    logits: (N,) objectness logits of the anchors.
    deltas: (N, 4) predicted deltas (weights 1).
    anchors: (N, 4).
    height, width: image size, to clip to.
    pre_nms, post_nms: static counts before and after NMS.
    nms_iou: NMS IoU threshold.
    min_size: boxes narrower or lower than this (pixels) are dropped.

  Returns:
    `(boxes, valid)`: (post_nms, 4) and (post_nms,) bool.
  """
  boxes = box_ops.clip(box_ops.decode(deltas, anchors, weights=(1.0, 1.0, 1.0, 1.0)),
                       height, width)
  big = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
  scores, index = jax.lax.top_k(jnp.where(big, logits, -jnp.inf), min(pre_nms, logits.shape[0]))
  keep, valid = box_ops.nms(boxes[index], scores, nms_iou, post_nms)
  return boxes[index][keep], valid


def detect(class_logits: jax.Array, box_deltas: jax.Array, proposals: jax.Array,
           proposal_valid: jax.Array, height: int, width: int, *, box_weights, score_threshold,
           nms_iou, max_detections, max_candidates) -> dict:
  """One image's detections from the box head's outputs on its proposals.

  Every (proposal, class) pair is a candidate box (the class's deltas applied to the proposal)
  scored by the class probability; those above `score_threshold` go, best `max_candidates`
  first, through class-aware NMS, which keeps `max_detections`.

  Args:
    class_logits: (P, K + 1), class 0 background.
    box_deltas: (P, K, 4).
    proposals: (P, 4); proposal_valid: (P,) bool.

  Returns:
    `boxes` (D, 4), `scores` (D,), `labels` (D,) int32 class ids in [0, K), `valid` (D,)
    bool.
  """
  num_props, num_classes = box_deltas.shape[:2]
  probs = jax.nn.softmax(class_logits, axis=-1)[:, 1:]  # (P, K)
  boxes = box_ops.clip(box_ops.decode(box_deltas, proposals[:, None, :], box_weights),
                       height, width).reshape(-1, 4)  # (P K, 4)
  scores = jnp.where(proposal_valid[:, None] & (probs > score_threshold), probs, -jnp.inf)
  classes = jnp.broadcast_to(jnp.arange(num_classes), (num_props, num_classes)).reshape(-1)
  scores, index = jax.lax.top_k(scores.reshape(-1), min(max_candidates, num_props * num_classes))
  local, valid = box_ops.batched_nms(boxes[index], scores, classes[index], nms_iou,
                                     max_detections)  # Indices into the top-k candidates.
  keep = index[local]
  return {"boxes": jnp.where(valid[:, None], boxes[keep], 0.0),
          "scores": jnp.where(valid, scores[local], 0.0),
          "labels": jnp.where(valid, classes[keep], 0).astype(jnp.int32), "valid": valid}


class FasterRCNN(nn.Module):
  """Faster R-CNN; see the module docstring.

  Attributes:
    num_classes: K object classes (background excluded).
    backbone: a registry name, a Module or a constructor (`backbone.build`) with `stage<k>`
      features at `feature_strides`.
    backbone_kwargs: the backbone's other fields (e.g. `widths` of a small VGG).
    feature_strides: strides of the stages the neck merges (top-down, nearest upsampling);
      the RPN and RoIAlign read the merged map at the finest of them.
    feature_width: channels of the neck's output.
    anchor_sizes: anchor sizes (square root of the area) in pixels.
    anchor_ratios: anchor aspect ratios (height / width).
    rpn_width: channels of the RPN's 3x3 convolution.
    rpn_batch_size: anchors sampled per image for the RPN losses (paper: 256).
    rpn_positive_fraction: their largest positive share (paper: 0.5).
    rpn_positive_iou, rpn_negative_iou: anchor labelling thresholds (paper: 0.7, 0.3).
    rpn_pre_nms_train, rpn_post_nms_train: proposals before / after NMS in training.
    rpn_pre_nms_test, rpn_post_nms_test: the same in evaluation.
    rpn_nms_iou: the RPN's NMS threshold (paper: 0.7).
    rpn_min_size: smallest proposal side in pixels.
    roi_batch_size: RoIs sampled per image for the box head in training (Detectron2: 512).
    roi_positive_fraction: their largest foreground share (paper: 0.25).
    roi_foreground_iou: IoU from which a RoI is foreground (paper: 0.5).
    pooled_size: RoIAlign output side (7).
    sampling_ratio: RoIAlign samples per bin and axis.
    head_width: width of the box head's two dense layers (paper: 4096 from VGG's fc6/fc7;
      Detectron2: 1024).
    box_weights: (wy, wx, wh, ww) of the box head's coding.
    smooth_l1_beta: beta of the box losses' smooth L1 (0: L1, Detectron2's default).
    score_threshold: smallest class probability kept as a detection.
    nms_iou: IoU threshold of the class-aware NMS of detections.
    max_detections: detections per image (static).
    max_candidates: (proposal, class) candidates entering the final NMS.
    bn_axis_name: passed to the backbone's BatchNorm (pmap); None leaves its default.
    dtype: computation dtype of the networks; box arithmetic and losses are float32 (float64
      in float64 mode).
    param_dtype: parameter dtype.
  """

  num_classes: int
  backbone: backbone_lib.Backbone
  backbone_kwargs: flax.core.FrozenDict = flax.core.FrozenDict()
  feature_strides: tuple[int, ...] = (8, 16)
  feature_width: int = 256
  anchor_sizes: tuple[float, ...] = (32.0, 64.0, 128.0, 256.0)
  anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
  rpn_width: int = 256
  rpn_batch_size: int = 256
  rpn_positive_fraction: float = 0.5
  rpn_positive_iou: float = 0.7
  rpn_negative_iou: float = 0.3
  rpn_pre_nms_train: int = 2000
  rpn_post_nms_train: int = 512
  rpn_pre_nms_test: int = 1000
  rpn_post_nms_test: int = 300
  rpn_nms_iou: float = 0.7
  rpn_min_size: float = 1.0
  roi_batch_size: int = 128
  roi_positive_fraction: float = 0.25
  roi_foreground_iou: float = 0.5
  pooled_size: int = 7
  sampling_ratio: int = 2
  head_width: int = 1024
  box_weights: tuple[float, float, float, float] = box_ops.DEFAULT_WEIGHTS
  smooth_l1_beta: float = 0.0
  score_threshold: float = 0.05
  nms_iou: float = 0.5
  max_detections: int = 100
  max_candidates: int = 1000
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def _conv(self, features: int, kernel: int, name: str, **kwargs) -> nn.Conv:
    return nn.Conv(features, (kernel, kernel), dtype=self.dtype, param_dtype=self.param_dtype,
                   name=name, **kwargs)

  def _dense(self, features: int, name: str, **kwargs) -> nn.Dense:
    return nn.Dense(features, dtype=self.dtype, param_dtype=self.param_dtype, name=name,
                    **kwargs)

  def _feature_map(self, images: jax.Array, train: bool) -> jax.Array:
    """The neck's merged map (B, Hf, Wf, feature_width) at stride min(feature_strides)."""
    kwargs = dict(self.backbone_kwargs)
    if self.bn_axis_name is not None:
      kwargs["bn_axis_name"] = self.bn_axis_name
    backbone = backbone_lib.build(self.backbone, dtype=self.dtype, param_dtype=self.param_dtype,
                                  **kwargs)
    _, features = backbone(images, train=train)
    strides = tuple(sorted(self.feature_strides, reverse=True))  # Coarsest first.
    names = backbone_lib.stages_by_stride(features, images.shape[1], strides)
    y = self._conv(self.feature_width, 1, f"lateral{strides[0]}")(features[names[0]])
    for coarse, stride, name in zip(strides, strides[1:], names[1:]):
      lateral = self._conv(self.feature_width, 1, f"lateral{stride}")(features[name])
      factor = coarse // stride
      up = jnp.repeat(jnp.repeat(y, factor, axis=1), factor, axis=2)  # Nearest upsampling.
      y = backbone_lib.fit(up, *lateral.shape[1:3]) + lateral
    return nn.relu(self._conv(self.feature_width, 3, "neck")(y))

  def _box_head(self, feature_map: jax.Array, rois: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Class logits (B, R, K + 1) and class-specific deltas (B, R, K, 4) of (B, R, 4) RoIs."""
    stride = min(self.feature_strides)
    pooled = roi_align(feature_map, rois, self.pooled_size, 1.0 / stride,
                       self.sampling_ratio)  # (B, R, S, S, C)
    x = pooled.reshape(*pooled.shape[:2], -1)
    x = nn.relu(self._dense(self.head_width, "fc1")(x))
    x = nn.relu(self._dense(self.head_width, "fc2")(x))
    logits = self._dense(self.num_classes + 1, "class_logits",
                         kernel_init=nn.initializers.normal(0.01))(x)
    deltas = self._dense(4 * self.num_classes, "box_deltas",
                         kernel_init=nn.initializers.normal(0.001))(x)
    out = precision.output_dtype(self.dtype)
    return (logits.astype(out), deltas.astype(out).reshape(*x.shape[:2], self.num_classes, 4))

  @nn.compact
  def __call__(self, images: jax.Array, gt_boxes: jax.Array | None = None,
               gt_labels: jax.Array | None = None,
               train: bool = False) -> tuple[dict, dict[str, jax.Array]]:
    """Detects objects, or (training) computes the losses.

    Args:
      images: (B, H, W, C).
      gt_boxes: (B, M, 4) ground truth in pixels (training only).
      gt_labels: (B, M) int classes in [0, K), -1 on padding (training only).
      train: training mode: BatchNorm batch statistics, sampling, losses.

    Returns:
      `(outputs, features)`. Training: outputs are the scalar losses `rpn_objectness`,
      `rpn_box`, `rcnn_class`, `rcnn_box` and diagnostics (`rcnn_accuracy`,
      `rpn_positives`, `rcnn_foreground`: mean counts per image). Evaluation: `boxes`
      (B, D, 4), `scores` (B, D), `labels` (B, D), `valid` (B, D) and `proposals` (B, P, 4)
      with `proposal_valid` (B, P). `features`: the neck's map under `feature_map`.
    """
    batch, height, width = images.shape[:3]
    feature_map = self._feature_map(images, train)  # (B, Hf, Wf, C)
    stride = min(self.feature_strides)
    num_anchors = len(self.anchor_sizes) * len(self.anchor_ratios)
    anchors = jnp.asarray(anchor_ops.grid_anchors(
        feature_map.shape[1], feature_map.shape[2], stride, self.anchor_sizes,
        self.anchor_ratios))  # (N, 4)
    t = nn.relu(self._conv(self.rpn_width, 3, "rpn_conv")(feature_map))
    small_init = nn.initializers.normal(0.01)
    rpn_logits = self._conv(num_anchors, 1, "rpn_objectness", kernel_init=small_init)(t)
    rpn_deltas = self._conv(4 * num_anchors, 1, "rpn_deltas", kernel_init=small_init)(t)
    out_dtype = precision.output_dtype(self.dtype)  # float32, or float64 in float64 mode.
    rpn_logits = rpn_logits.astype(out_dtype).reshape(batch, -1)  # (B, N)
    rpn_deltas = rpn_deltas.astype(out_dtype).reshape(batch, -1, 4)  # (B, N, 4)

    pre, post = ((self.rpn_pre_nms_train, self.rpn_post_nms_train) if train else
                 (self.rpn_pre_nms_test, self.rpn_post_nms_test))
    proposals, proposal_valid = jax.vmap(
        lambda l, d: propose(l, d, anchors, height, width, pre, post, self.rpn_nms_iou,
                             self.rpn_min_size))(
            jax.lax.stop_gradient(rpn_logits), jax.lax.stop_gradient(rpn_deltas))
    features = {"feature_map": feature_map}
    if not train:
      class_logits, box_deltas = self._box_head(feature_map, proposals)
      out = jax.vmap(lambda c, d, p, v: detect(
          c, d, p, v, height, width, box_weights=self.box_weights,
          score_threshold=self.score_threshold, nms_iou=self.nms_iou,
          max_detections=self.max_detections, max_candidates=self.max_candidates))(
              class_logits, box_deltas, proposals, proposal_valid)
      return {**out, "proposals": proposals, "proposal_valid": proposal_valid}, features

    if gt_boxes is None or gt_labels is None:
      raise ValueError("FasterRCNN needs gt_boxes and gt_labels in training.")
    gt_boxes = gt_boxes.astype(out_dtype)
    rpn_keys, roi_keys = jax.random.split(self.make_rng("dropout"), (2, batch))
    rpn = jax.vmap(lambda k, b, l: targets.rpn_targets(
        k, anchors, b, l, num=self.rpn_batch_size,
        positive_fraction=self.rpn_positive_fraction, positive_iou=self.rpn_positive_iou,
        negative_iou=self.rpn_negative_iou))(rpn_keys, gt_boxes, gt_labels)
    norm = batch * self.rpn_batch_size
    objectness = optax.sigmoid_binary_cross_entropy(rpn_logits, rpn["objectness"])
    rpn_box = targets.smooth_l1(rpn_deltas - rpn["deltas"], self.smooth_l1_beta).sum(-1)
    rois = jax.vmap(lambda k, p, v, b, l: targets.roi_targets(
        k, p, v, b, l, num=self.roi_batch_size, positive_fraction=self.roi_positive_fraction,
        foreground_iou=self.roi_foreground_iou, box_weights=self.box_weights))(
            roi_keys, proposals, proposal_valid, gt_boxes, gt_labels)
    class_logits, box_deltas = self._box_head(feature_map, rois["rois"])
    weight = rois["weight"]  # (B, R)
    num_rois = jnp.maximum(weight.sum(), 1.0)
    labels = rois["labels"]
    foreground = (labels > 0) & (weight > 0)
    class_loss = optax.softmax_cross_entropy_with_integer_labels(class_logits, labels)
    picked = jnp.take_along_axis(
        box_deltas, jnp.maximum(labels - 1, 0)[..., None, None], axis=2)[:, :, 0]  # (B, R, 4)
    box_loss = targets.smooth_l1(picked - rois["deltas"], self.smooth_l1_beta).sum(-1)
    hits = (jnp.argmax(class_logits, -1) == labels) & (weight > 0)
    return {
        "rpn_objectness": jnp.where(rpn["weight"] > 0, objectness, 0.0).sum() / norm,
        "rpn_box": jnp.where(rpn["positive"], rpn_box, 0.0).sum() / norm,
        "rcnn_class": jnp.where(weight > 0, class_loss, 0.0).sum() / num_rois,
        "rcnn_box": jnp.where(foreground, box_loss, 0.0).sum() / num_rois,
        "rcnn_accuracy": hits.sum() / num_rois,
        "rpn_positives": rpn["positive"].sum() / batch,
        "rcnn_foreground": foreground.sum() / batch,
    }, features


# Fields set from elsewhere than `config.detection`: the dataset's classes, `config.model` (the
# backbone, its fields and the dtypes), the training loop (pmap's BatchNorm axis), and Linen's.
# Its other fields are `config.detection` fields (`task.default_config`).
NOT_HYPERPARAMETERS = frozenset({"num_classes", "backbone", "backbone_kwargs", "bn_axis_name",
                                 "dtype", "param_dtype"})
