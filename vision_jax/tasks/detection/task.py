"""Object detection: Faster R-CNN over a registry backbone, COCO-style mAP.

Data: any dataset whose examples carry `image` and a TFDS `Sequence` of objects (by default
`objects`, with `bbox` (N, 4) normalised (ymin, xmin, ymax, xmax) and `label` (N,)), i.e. the
embedded `synthetic_shapes` and `fashion_scenes`, and TFDS `coco/2017` and `voc/2007`.
`example_transform` letterboxes each image to `input.image_size` (longer side to the size,
zero padding at the bottom/right), turns its boxes into pixels of that image and pads them to
`max_boxes` rows (labels -1 on padding; boxes past `max_boxes` are dropped, as are crowd
boxes (`is_crowd`) and empty boxes).

Flips: the pipeline's per-record random flip (drawn from the record's global position, so the
stream stays deterministic and resumable) moves `image` and the pixel `boxes` together
(`transforms.flip_where`, as `feature_kinds` declares), and so do crops and scales
(`input.train_crop`); a box a crop leaves without area becomes an all-zero row, and
`model_inputs` gives it label -1, so the targets do not count it as an object.

Evaluation: `evaluate_extra` runs the detector once over the whole eval split on every process
(replicated, as captioning decodes), counts images and detections and computes mAP@[.5:.95],
mAP@.5 and mAP@.75 with `vision_jax.tasks.detection.metrics`, so every process holds every
image and no gathering is needed; the loop's summed pass is off (`summed_eval`), and `eval_sums`
only gives the live weights' `raw/` counts next to an EMA. `draw_pictures` predicts the first
eval batch again and process 0 draws its first `num_pictures` images with their ground truth
and predicted boxes.
"""

import dataclasses
from typing import ClassVar

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from vision_jax import errors
from vision_jax.data import datasets, transforms
from vision_jax.models import precision
from vision_jax.tasks import base
from vision_jax.tasks.detection import faster_rcnn
from vision_jax.tasks.detection import metrics as det_metrics

LOSSES = ("rpn_objectness", "rpn_box", "rcnn_class", "rcnn_box")


def letterbox(image: np.ndarray, size: int | None) -> tuple[np.ndarray, tuple[int, int]]:
  """Resizes the longer side to `size` (bilinear) and zero-pads to `size`×`size` at the
  bottom/right. Returns the image and the (height, width) the content covers. None: as is."""
  h, w = image.shape[:2]
  if size is None or (h == size and w == size):
    return image, (h, w)
  scale = size / max(h, w)
  new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
  squeeze = image.ndim == 3 and image.shape[2] == 1
  resized = np.asarray(Image.fromarray(image[..., 0] if squeeze else image).resize(
      (new_w, new_h), Image.BILINEAR))
  resized = resized[..., None] if squeeze else resized
  canvas = np.zeros((size, size) + image.shape[2:], image.dtype)
  canvas[:new_h, :new_w] = resized
  return canvas, (new_h, new_w)


@dataclasses.dataclass(frozen=True)
class DetectionTask(base.Task):
  """Boxes and classes of objects; see the module docstring.

  Every field but `image_size` (`config.input.image_size`) is a `config.detection` field, with
  its default from here (`default_config`).

  Attributes:
    image_size: side of the letterboxed images (None: keep the dataset's size).
    max_boxes: ground-truth boxes per image (static padding).
    objects_key: the dataset's `Sequence` feature of objects (`bbox`, `label`).
    class_names: one name per class; () takes the dataset's `<objects_key>/label` names in
      `prepare` (which also checks that given names are as many as the dataset's classes).
    loss_weights: weights of the losses in `LOSSES` order.
    eval_max_detections: detections per image and class counted by the mAP (COCO: 100).
    num_pictures: eval images drawn after each eval.
  """
  image_size: int | None = None
  max_boxes: int = 100
  objects_key: str = "objects"
  class_names: tuple[str, ...] = ()
  loss_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
  eval_max_detections: int = 100
  num_pictures: int = 4

  metric_names: ClassVar[tuple[str, ...]] = ("map50", "map", "map75")
  lower_is_better: ClassVar[tuple[str, ...]] = ()
  curve_metric: ClassVar[str] = "map50"
  picture_dir: ClassVar[str] = "detection"
  summed_eval: ClassVar[bool] = False  # `evaluate_extra` counts and scores in one pass.
  # After `example_transform`: pixel boxes move with the image; their labels do not.
  feature_kinds: ClassVar[transforms.FeatureKinds] = {
      "image": "image", "boxes": "boxes", "labels": "other"}

  @property
  def keys(self) -> tuple[str, ...]:
    return ("image", self.objects_key)

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "DetectionTask":
    return cls(image_size=config.input.image_size,
               **base.config_fields(cls, config.detection, exclude=("image_size",)))

  @classmethod
  def validate_config(cls, config: ml_collections.ConfigDict) -> None:
    """Checks `config.detection` and the input settings detection needs."""
    d, i = config.detection, config.input
    if i.image_size is None or i.center_crop_fraction != 1:
      raise errors.UserError(
          "Detection letterboxes every image to config.input.image_size (set it, e.g. 64 or "
          f"512; got {i.image_size}) and needs input.center_crop_fraction=1.0 (got "
          f"{i.center_crop_fraction}): a crop would cut boxes.")
    if d.max_boxes < 1 or d.max_detections < 1 or d.eval_max_detections < 1:
      raise errors.UserError(
          "config.detection.max_boxes, max_detections and eval_max_detections must be >= 1; "
          f"got {d.max_boxes}, {d.max_detections}, {d.eval_max_detections}.")
    strides = tuple(d.feature_strides)
    if not strides or any(s < 1 or s & (s - 1) for s in strides) or len(set(strides)) != len(
        strides):
      raise errors.UserError(f"config.detection.feature_strides={strides} must be distinct "
                             "powers of two, e.g. (4, 8) or (8, 16).")
    if not d.anchor_sizes or min(d.anchor_sizes) <= 0 or not d.anchor_ratios or min(
        d.anchor_ratios) <= 0:
      raise errors.UserError(f"config.detection.anchor_sizes={d.anchor_sizes} and anchor_ratios="
                             f"{d.anchor_ratios} must be non-empty and positive.")
    if not 0 <= d.rpn_negative_iou <= d.rpn_positive_iou <= 1:
      raise errors.UserError(
          f"config.detection.rpn_negative_iou={d.rpn_negative_iou} and rpn_positive_iou="
          f"{d.rpn_positive_iou} need 0 <= negative <= positive <= 1.")
    for name in ("rpn_positive_fraction", "roi_positive_fraction", "roi_foreground_iou",
                 "rpn_nms_iou", "nms_iou"):
      if not 0 < d[name] <= 1:
        raise errors.UserError(f"config.detection.{name}={d[name]} must be in (0, 1].")
    if not 0 <= d.score_threshold < 1:
      raise errors.UserError(
          f"config.detection.score_threshold={d.score_threshold} must be in [0, 1).")
    for pre, post in (("rpn_pre_nms_train", "rpn_post_nms_train"),
                      ("rpn_pre_nms_test", "rpn_post_nms_test")):
      if not 1 <= d[post] <= d[pre]:
        raise errors.UserError(
            f"config.detection.{post}={d[post]} must be in [1, {pre}={d[pre]}].")
    for name in ("rpn_batch_size", "roi_batch_size", "pooled_size", "sampling_ratio",
                 "head_width", "feature_width", "rpn_width", "max_candidates"):
      if d[name] < 1:
        raise errors.UserError(f"config.detection.{name}={d[name]} must be >= 1.")
    if len(d.box_weights) != 4 or min(d.box_weights) <= 0:
      raise errors.UserError(f"config.detection.box_weights={d.box_weights} must hold 4 "
                             "positive weights (wy, wx, wh, ww), e.g. (10.0, 10.0, 5.0, 5.0).")
    if len(d.loss_weights) != len(LOSSES) or min(d.loss_weights) < 0:
      raise errors.UserError(
          f"config.detection.loss_weights={d.loss_weights} must hold {len(LOSSES)} "
          "non-negative weights (RPN objectness, RPN box, R-CNN class, R-CNN box).")
    if d.num_pictures < 0:
      raise errors.UserError(f"config.detection.num_pictures={d.num_pictures} must be >= 0.")

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def prepare(self, builder: tfds.core.DatasetBuilder, train_source,
              workdir: str) -> "DetectionTask":
    """Takes the class names from the dataset unless the config names them.

    Raises:
      errors.UserError: when the dataset has no `<objects_key>` feature with a `label`.
    """
    del train_source, workdir
    names = dataset_class_names(builder, self.objects_key)
    if not self.class_names:
      return dataclasses.replace(self, class_names=names)
    if len(self.class_names) != len(names):
      raise errors.UserError(
          f"config.detection.class_names names {len(self.class_names)} classes, but "
          f"{builder.info.full_name!r} has {len(names)}: {names}.")
    return self

  def check_dataset(self, builder: tfds.core.DatasetBuilder) -> None:
    datasets.check_features(builder, {"image": None, self.objects_key: "detection.objects_key"})
    dataset_class_names(builder, self.objects_key)

  def example_transform(self, example: dict) -> dict:
    """Letterboxed image, padded pixel boxes (M, 4) and labels (M,).

    `labels` (the dataset's `<objects_key>/label`) are class ids under the name that detections
    give theirs too (`FasterRCNN`, `predict`): ground truth and predictions read alike.
    """
    image, (h, w) = letterbox(example["image"], self.image_size)
    objects = example[self.objects_key]
    boxes = np.asarray(objects["bbox"], np.float32).reshape(-1, 4) * np.float32([h, w, h, w])
    labels = np.asarray(objects["label"], np.int32).reshape(-1)
    crowd = np.asarray(objects.get("is_crowd", np.zeros(len(labels))), bool).reshape(-1)
    n = min(len(boxes), len(labels), len(crowd))  # Equal in real data (not in TFDS mock data).
    boxes, labels = boxes[:n], labels[:n]
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & ~crowd[:n]
    boxes, labels = boxes[keep][:self.max_boxes], labels[keep][:self.max_boxes]
    n = len(labels)
    padded_boxes = np.zeros((self.max_boxes, 4), np.float32)
    padded_boxes[:n] = boxes
    padded_labels = np.full((self.max_boxes,), -1, np.int32)
    padded_labels[:n] = labels
    # The pipeline's flips move the boxes with the image (`feature_kinds`).
    return {"image": image, "boxes": padded_boxes, "labels": padded_labels}

  def build_model(self, config: ml_collections.ConfigDict,
                  builder: tfds.core.DatasetBuilder | None) -> nn.Module:
    """Faster R-CNN over the backbone `config.model.name` (its fields in `config.model.kwargs`)."""
    del builder  # The classes are known after `prepare`.
    if not self.class_names:
      raise ValueError("DetectionTask has no class names: set config.detection.class_names or "
                       "call `prepare` with the dataset first.")
    d = config.detection
    return faster_rcnn.FasterRCNN(
        num_classes=self.num_classes, backbone=config.model.name,
        backbone_kwargs=flax.core.FrozenDict(
            {k: base.hashable(v) for k, v in config.model.kwargs.items()}),
        **precision.dtypes(config.model.dtype),
        **base.config_fields(faster_rcnn.FasterRCNN, d, exclude=faster_rcnn.NOT_HYPERPARAMETERS))

  def init_inputs(self, image_shape: tuple[int, ...]) -> tuple:
    return (jnp.zeros((1, *image_shape), jnp.float32),
            jnp.zeros((1, self.max_boxes, 4), jnp.float32),
            jnp.full((1, self.max_boxes), -1, jnp.int32))

  def model_inputs(self, batch: dict) -> tuple:
    """Image, boxes and labels; a box that a crop left without area is no object (label -1)."""
    boxes = batch["boxes"]  # (B, M, 4)
    real = (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])  # (B, M)
    return batch["image"], boxes, jnp.where(real, batch["labels"], -1)

  def loss(self, outputs, batch: dict) -> tuple[jax.Array, dict]:
    losses, _ = outputs
    total = sum(w * losses[k] for w, k in zip(self.loss_weights, LOSSES))
    return total, {**losses, "loss": total}

  def eval_sums(self, outputs, batch: dict) -> dict:
    detections, _ = outputs
    weight = batch["weight"]
    return {"count": weight.sum(),
            "detections": (detections["valid"].sum(axis=1) * weight).sum()}

  def finalize(self, sums: dict) -> dict:
    count = float(np.asarray(sums["count"]))
    return {"num_examples": int(count),
            "detections_per_image": float(np.asarray(sums["detections"])) / max(count, 1.0)}

  def summary(self, metrics: dict) -> str:
    return (f"mAP@.5 {metrics['map50']:.4f}, mAP@[.5:.95] {metrics['map']:.4f}, "
            f"mAP@.75 {metrics['map75']:.4f}, {metrics['detections_per_image']:.1f} "
            "detections per image")

  def predict(self, model: nn.Module, variables: dict, config: ml_collections.ConfigDict,
              source, mesh: jax.sharding.Mesh, limit: int | None = None) -> tuple[list, list]:
    """Detections and ground truth of the first `limit` (None: all) images of `source`.

    Every process runs the whole split (replicated), so all of them get every image.

    Returns:
      `(detections, ground_truths)`: per-image dicts in pixels of the letterboxed image,
      {"boxes", "labels", "scores"} and {"boxes", "labels"} (`labels`: class ids).
    """
    predict_fn = base.jitted_apply(model, mesh)
    detections, truths = [], []
    count = len(source) if limit is None else min(limit, len(source))
    for batch, images, real in base.replicated_eval_batches(self, source, config, mesh, count):
      out = jax.device_get(predict_fn(variables, images)[0])
      for i in range(real):
        valid, truth = out["valid"][i], batch["labels"][i] >= 0
        detections.append({"boxes": out["boxes"][i][valid], "labels": out["labels"][i][valid],
                           "scores": out["scores"][i][valid]})
        truths.append({"boxes": batch["boxes"][i][truth], "labels": batch["labels"][i][truth]})
    return detections, truths

  def predictions(self, model: nn.Module, variables: dict, images: jax.Array) -> dict:
    """`detections`: per image, {"boxes" (D, 4) in pixels, "labels" (D,), "scores" (D,)}."""
    out = jax.device_get(base.jitted_apply(model)(variables, images)[0])
    return {"detections": [
        {"boxes": out["boxes"][i][valid], "labels": out["labels"][i][valid],
         "scores": out["scores"][i][valid]} for i, valid in enumerate(out["valid"])]}

  def evaluate_extra(self, context: base.EvalContext) -> dict:
    """Image and detection counts, COCO-style mAP and per-class AP@.5, all from one pass of
    the detector over the eval split (hence `summed_eval = False`)."""
    c = context
    detections, truths = self.predict(c.model, c.variables, c.config, c.eval_source, c.mesh)
    result = det_metrics.average_precision(detections, truths, self.num_classes,
                                           max_detections=self.eval_max_detections)
    count = len(detections)
    metrics = {"num_examples": count,  # As `finalize` reports them from the summed pass.
               "detections_per_image": sum(len(d["labels"]) for d in detections) / max(count, 1),
               "map": result["map"], "map50": result["map50"], "map75": result["map75"]}
    for name, ap50 in zip(self.class_names, result["ap"][:, 0]):
      if not np.isnan(ap50):
        metrics[f"ap50/{base.metric_tag(name)}"] = float(ap50)
    return metrics

  def draw_pictures(self, context: base.EvalContext) -> str | None:
    """The first `num_pictures` eval images with their ground truth and predicted boxes (every
    process predicts their batch; process 0 draws)."""
    if not self.num_pictures:
      return None
    c = context
    detections, truths = self.predict(c.model, c.variables, c.config, c.eval_source, c.mesh,
                                      limit=self.num_pictures)
    if jax.process_index() != 0:
      return None
    from vision_jax.tasks.detection import pictures as det_viz  # matplotlib: only when drawing.
    n = len(detections)
    images = [self.example_transform(c.eval_source[i])["image"] for i in range(n)]
    path = self.picture_path(c.workdir, c.step)
    det_viz.plot_detections(
        images, truths, detections, self.class_names, path,
        title=f"Faster R-CNN ({c.config.model.name}) on {c.config.dataset.name}, step {c.step}")
    return path


def dataset_class_names(builder: tfds.core.DatasetBuilder, objects_key: str) -> tuple[str, ...]:
  """The names of `<objects_key>/label` in the dataset's features.

  Raises:
    errors.UserError: when the feature is missing or has no names.
  """
  features = builder.info.features
  if objects_key not in features or "label" not in features[objects_key].feature:
    raise errors.UserError(f"Dataset {builder.info.full_name!r} has no '{objects_key}/label' "
                           f"feature (its features: {sorted(features)}); set "
                           "config.detection.objects_key, or pick a dataset with boxes.")
  names = getattr(features[objects_key].feature["label"], "names", None)
  if not names:
    raise errors.UserError(f"'{objects_key}/label' of {builder.info.full_name!r} has no class "
                           "names; set config.detection.class_names.")
  return tuple(names)


def default_config() -> ml_collections.ConfigDict:
  """`config.detection` with its defaults: the fields of `DetectionTask` (but `image_size`) and
  the hyperparameters of `FasterRCNN`, documented there (`vision_jax.config.base_config` calls
  it). A field added to either is a config field."""
  return ml_collections.ConfigDict({
      **base.config_fields(DetectionTask, exclude=("image_size",)),
      **base.config_fields(faster_rcnn.FasterRCNN, exclude=faster_rcnn.NOT_HYPERPARAMETERS)})
