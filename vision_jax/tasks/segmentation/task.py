"""Semantic segmentation: a class per pixel, FCN models, mIoU from an exact confusion matrix.

Masks arrive as the dataset stores them, (B, H, W, 1) integers, under the batch key `mask`
(read from the dataset feature `segmentation.mask_key`). On the device they are mapped to
classes through `segmentation.label_map`; pixels of `ignore_label`, of values the map leaves out
and of padding (the random-scale crop pads masks with `transforms.MASK_FILL`) are ignored by
the loss and the metrics.
"""

import dataclasses
import os
from typing import ClassVar

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tensorflow_datasets as tfds

from vision_jax import errors, sharding
from vision_jax.data import datasets, pipeline, transforms
from vision_jax.models import precision
from vision_jax.tasks import base
from vision_jax.tasks.segmentation import fcn
from vision_jax.tasks.segmentation import metrics as seg_metrics

IGNORE = -1  # The class of ignored pixels after `label_table`.


def label_table(num_classes: int, label_map: tuple[int, ...], ignore_label: int) -> np.ndarray:
  """Lookup table raw mask value (0..255) → class, with `IGNORE` for pixels to ignore.

  Args:
    num_classes: K.
    label_map: raw value v → class `label_map[v]` (negative: ignore); values beyond it are
      ignored. Empty: the identity for v < K, other values ignored.
    ignore_label: a raw value that is always ignored (e.g. 255, VOC's object boundaries).

  Raises:
    ValueError: when `label_map` names a class outside [0, K).
  """
  table = np.full(256, IGNORE, np.int32)
  if label_map:
    if max(label_map) >= num_classes:
      raise ValueError(f"label_map {label_map} names class {max(label_map)}, but there are only "
                       f"{num_classes} classes.")
    table[:len(label_map)] = np.where(np.asarray(label_map) < 0, IGNORE, label_map)
  else:
    table[:num_classes] = np.arange(num_classes)
  if 0 <= ignore_label < 256:
    table[ignore_label] = IGNORE
  return table


def pixel_cross_entropy(logits: jax.Array, labels: jax.Array,
                        class_weights: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Per-pixel softmax cross-entropy and its weight, zero at ignored pixels.

  Args:
    logits: (B, H, W, K) float32.
    labels: (B, H, W) int classes; `IGNORE` (or any negative value) is ignored.
    class_weights: (K,) weight of each true class; None weighs every pixel 1.

  Returns:
    `(loss, weight)`, both (B, H, W): the loss already multiplied by the weight. The mean loss
    is `loss.sum() / weight.sum()` (PyTorch's weighted `CrossEntropyLoss`).
  """
  valid = labels >= 0
  safe = jnp.where(valid, labels, 0)
  weight = valid.astype(jnp.float32)
  if class_weights is not None:
    weight = weight * class_weights[safe]
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, safe)  # (B, H, W)
  return loss * weight, weight


@dataclasses.dataclass(frozen=True)
class SegmentationTask(base.Task):
  """A class per pixel.

  Every field is a `config.segmentation` field, with its default from here (`default_config`).

  Attributes:
    class_names: one name per class (K = its length: the model's output width); pictures label
      colours with them. Default: background and the embedded `synthetic_shapes`' shapes.
    mask_key: the dataset feature holding the masks.
    label_map: raw mask value v → class label_map[v] (< 0: ignore); values past its end are
      ignored. (): value v is class v, values >= K are ignored (see `label_table`).
    ignore_label: raw mask value whose pixels are never counted (loss or metrics).
    class_weights: per-class loss weights; (): every pixel weighs 1.
    num_pictures: eval images drawn to `workdir/segmentation/` after each eval (image | truth |
      prediction); 0: none.
  """
  class_names: tuple[str, ...] = (
      "background", "circle", "square", "triangle", "cross", "diamond", "ring")
  mask_key: str = "mask"
  label_map: tuple[int, ...] = ()
  ignore_label: int = 255
  class_weights: tuple[float, ...] = ()
  num_pictures: int = 4

  keys: ClassVar[tuple[str, ...]] = ("image", "mask")
  feature_kinds: ClassVar[transforms.FeatureKinds] = {"image": "image", "mask": "mask"}
  metric_names: ClassVar[tuple[str, ...]] = ("miou", "pixel_accuracy", "mean_accuracy", "loss")
  curve_metric: ClassVar[str] = "miou"
  picture_dir: ClassVar[str] = "segmentation"
  supports_eval_flip: ClassVar[bool] = True

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "SegmentationTask":
    return cls(**base.config_fields(cls, config.segmentation))

  @classmethod
  def validate_config(cls, config: ml_collections.ConfigDict) -> None:
    """Checks `config.segmentation`."""
    s = config.segmentation
    if s.variant not in fcn.VARIANTS:
      raise errors.UserError(f"config.segmentation.variant={s.variant!r} is not valid; valid "
                             f"choices: {list(fcn.VARIANTS)}")
    num_classes = len(s.class_names)
    if num_classes < 2:
      raise errors.UserError(f"config.segmentation.class_names={s.class_names} must name at "
                             "least 2 classes (e.g. background and object).")
    if s.class_weights and (len(s.class_weights) != num_classes or min(s.class_weights) < 0):
      raise errors.UserError(f"config.segmentation.class_weights={s.class_weights} must hold "
                             f"one non-negative weight per class ({num_classes}), or be () for "
                             "none.")
    if s.label_map and max(s.label_map) >= num_classes:
      raise errors.UserError(f"config.segmentation.label_map={s.label_map} maps to class "
                             f"{max(s.label_map)}, but class_names has only {num_classes} "
                             "classes.")
    if s.head_width < 0 or s.head_kernel < 1 or s.num_pictures < 0:
      raise errors.UserError(
          "config.segmentation.head_width and num_pictures must be >= 0 and head_kernel >= 1; "
          f"got {s.head_width}, {s.num_pictures}, {s.head_kernel}.")

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def dataset_keys(self) -> dict[str, str]:
    return {"image": "image", "mask": self.mask_key}

  def check_dataset(self, builder: tfds.core.DatasetBuilder) -> None:
    datasets.check_features(builder, {"image": None, self.mask_key: "segmentation.mask_key"})

  def build_model(self, config: ml_collections.ConfigDict,
                  builder: tfds.core.DatasetBuilder | None) -> nn.Module:
    """An FCN over the backbone `config.model.name` (its fields in `config.model.kwargs`)."""
    del builder  # The classes come from the config: masks carry no class names.
    return fcn.FCN(
        num_classes=self.num_classes, backbone=config.model.name,
        backbone_kwargs=flax.core.FrozenDict(
            {k: tuple(v) if isinstance(v, list) else v for k, v in config.model.kwargs.items()}),
        **precision.dtypes(config.model.dtype),
        **base.config_fields(fcn.FCN, config.segmentation, exclude=_NOT_MODEL_CONFIG))

  def labels(self, batch: dict) -> jax.Array:
    """The batch's masks as classes (B, H, W), `IGNORE` where pixels do not count."""
    table = jnp.asarray(label_table(self.num_classes, self.label_map, self.ignore_label))
    mask = batch["mask"][..., 0].astype(jnp.int32)  # (B, H, W)
    return jnp.take(table, mask, mode="fill", fill_value=IGNORE)

  def _class_weights(self) -> jax.Array | None:
    return jnp.asarray(self.class_weights, jnp.float32) if self.class_weights else None

  def loss(self, outputs, batch: dict) -> tuple[jax.Array, dict]:
    logits, _ = outputs  # (B, H, W, K)
    labels = self.labels(batch)
    loss, weight = pixel_cross_entropy(logits, labels, self._class_weights())
    mean_loss = loss.sum() / jnp.maximum(weight.sum(), 1e-6)
    valid = labels >= 0
    hits = (jnp.argmax(logits, -1) == labels) & valid
    return mean_loss, {"loss": mean_loss, "weight": weight.sum(),
                       "pixel_accuracy": hits.sum() / jnp.maximum(valid.sum(), 1)}

  def eval_sums(self, outputs, batch: dict) -> dict:
    logits, _ = outputs
    labels = self.labels(batch)
    labels = jnp.where(batch["weight"][:, None, None] > 0, labels, IGNORE)  # Padding rows.
    loss, weight = pixel_cross_entropy(logits, labels, self._class_weights())
    return {
        "confusion": seg_metrics.confusion_matrix(labels, jnp.argmax(logits, -1), labels >= 0,
                                                  self.num_classes),  # (K, K)
        "loss": loss.sum(), "loss_weight": weight.sum(), "count": batch["weight"].sum()}

  def merge_flipped(self, outputs, mirrored_outputs):
    """Flip averaging: the mirrored image's logits flipped back onto the original pixels, then
    the mean of both softmaxes per pixel, as log-probabilities."""
    logits, features = outputs  # (B, H, W, K)
    return base.merge_flipped_logits(logits, mirrored_outputs[0][:, :, ::-1]), features

  def finalize(self, sums: dict) -> dict:
    sums = jax.device_get(sums)
    metrics = seg_metrics.metrics_from_confusion(sums["confusion"])
    iou = metrics.pop("iou")
    metrics["loss"] = float(sums["loss"]) / max(float(sums["loss_weight"]), 1e-6)
    metrics["num_examples"] = int(sums["count"])
    metrics["num_pixels"] = int(np.asarray(sums["confusion"], np.int64).sum())
    for name, value in zip(self.class_names, iou):
      if not np.isnan(value):  # NaN: the class is neither in the labels nor predicted.
        metrics[f"iou/{base.metric_tag(name)}"] = float(value)
    return metrics

  def summary(self, metrics: dict) -> str:
    return (f"mIoU {metrics['miou']:.4f}, pixel accuracy {metrics['pixel_accuracy']:.4f}, "
            f"mean accuracy {metrics['mean_accuracy']:.4f}, loss {metrics['loss']:.4f}")

  def predictions(self, model: nn.Module, variables: dict, images: jax.Array) -> dict:
    """`mask` (B, H, W): the predicted class of each pixel."""
    logits, _ = base.jitted_apply(model)(variables, images)
    return {"mask": np.asarray(jnp.argmax(logits, -1))}

  def draw_pictures(self, context: base.EvalContext) -> str | None:
    """Draws the first `num_pictures` eval images: image | ground truth | prediction.

    Every process predicts them (the state may span processes, so the computation is
    collective); process 0 draws.
    """
    if not self.num_pictures:
      return None
    c = context
    raw, batch = pipeline.eval_examples(c.eval_source,
                                        pipeline.InputOptions.from_config(c.config.input),
                                        self.num_pictures, keys=self.keys,
                                        kinds=self.feature_kinds)
    images = sharding.to_global({"image": batch["image"]}, sharding.replicated(c.mesh))["image"]
    predicted = np.asarray(base.jitted_apply(c.model, c.mesh, _classes)(c.variables, images))
    if jax.process_index() != 0:
      return None
    from vision_jax.tasks.segmentation import pictures as seg_viz  # matplotlib: only when drawing.
    path = self.picture_path(c.workdir, c.step)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    seg_viz.plot_predictions(raw["image"], np.asarray(self.labels(batch)), predicted,
                             self.class_names, path,
                             title=f"{c.config.model.name} FCN-{c.config.segmentation.variant} "
                             f"on {c.config.dataset.name}, step {c.step}")
    return path


def _classes(outputs) -> jax.Array:
  """Per-pixel classes (B, H, W) of the model's `(logits, features)`: inside the jit, so only
  class maps leave the devices."""
  return jnp.argmax(outputs[0], -1)



# `fcn.FCN`'s fields that `config.segmentation` does not hold: the task sets them from elsewhere
# (the classes, `config.model`'s backbone, its fields and dtypes) and the training loop (pmap's
# BatchNorm axis).
_NOT_MODEL_CONFIG = frozenset({"num_classes", "backbone", "backbone_kwargs", "bn_axis_name",
                               "dtype", "param_dtype"})


def default_config() -> ml_collections.ConfigDict:
  """`config.segmentation` with its defaults: the hyperparameters of the model `fcn.FCN` (its
  fields but `_NOT_MODEL_CONFIG`) and the fields of `SegmentationTask`, documented there
  (`vision_jax.config.base_config` calls it). A field added to either is a config field."""
  return ml_collections.ConfigDict({
      **base.config_fields(fcn.FCN, exclude=_NOT_MODEL_CONFIG),
      **base.config_fields(SegmentationTask)})
