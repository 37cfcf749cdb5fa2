"""The paper's task (`shape_and_centre`, registered): the shape class and where it is."""

import dataclasses
from typing import ClassVar

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tensorflow_datasets as tfds

from vision_jax import tasks
from vision_jax.data import transforms
from vision_jax.models import precision
from vision_jax.tasks import base

from example_paper import models as paper_models


@tasks.register("shape_and_centre")
@dataclasses.dataclass(frozen=True)
class ShapeAndCentreTask(base.Task):
  """Classify the largest object of a scene and regress its centre (in pixels).

  Attributes:
    centre_weight: Weight of the centre's smooth-L1 loss (in units of the image side).
  """
  centre_weight: float = 1.0

  keys: ClassVar[tuple[str, ...]] = ("image", "label", "objects")
  # What the pipeline's flips and crops move: the centre moves with the image.
  feature_kinds: ClassVar[dict[str, str]] = {
      "image": transforms.IMAGE, "label": transforms.OTHER, "centre": transforms.POINTS}
  metric_names: ClassVar[tuple[str, ...]] = ("accuracy", "centre_error", "loss")
  lower_is_better: ClassVar[tuple[str, ...]] = ("centre_error", "loss")
  curve_metric: ClassVar[str] = "accuracy"

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "ShapeAndCentreTask":
    return cls(centre_weight=config.model.kwargs.get("centre_weight", 1.0))

  @classmethod
  def head_fields(cls) -> frozenset[str]:
    return frozenset({"centre_weight"})

  def example_transform(self, example: dict) -> dict:
    """`centre` (1, 2): the (y, x) pixel centre of the largest box, the labelled object."""
    boxes = np.asarray(example["objects"]["bbox"], np.float32).reshape(-1, 4)  # (N, 4) in [0, 1]
    largest = np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    h, w = example["image"].shape[:2]
    ymin, xmin, ymax, xmax = boxes[largest]
    centre = np.array([[(ymin + ymax) / 2 * h, (xmin + xmax) / 2 * w]], np.float32)
    return {"image": example["image"], "label": example["label"], "centre": centre}

  def build_model(self, config: ml_collections.ConfigDict,
                  builder: tfds.core.DatasetBuilder) -> nn.Module:
    kwargs = {k: v for k, v in config.model.kwargs.items() if k not in self.head_fields()}
    return paper_models.ShapeAndCentre(
        backbone=config.model.name, num_classes=builder.info.features["label"].num_classes,
        image_size=config.input.image_size or builder.info.features["image"].shape[0],
        backbone_kwargs=flax.core.FrozenDict(kwargs), **precision.dtypes(config.model.dtype))

  def _centre_error(self, outputs, batch: dict) -> jax.Array:
    """Per-example distance in pixels between predicted and true centre, (B,)."""
    return jnp.linalg.norm(outputs[1]["centre"][:, 0] - batch["centre"][:, 0], axis=-1)

  def loss(self, outputs, batch: dict) -> tuple[jax.Array, dict]:
    logits, features = outputs
    side = batch["image"].shape[1]
    classes = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    centre = optax.huber_loss(features["centre"] / side, batch["centre"] / side).sum(-1).mean()
    metrics = {"loss": classes, "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
               "centre_error": self._centre_error(outputs, batch).mean()}
    return classes + self.centre_weight * centre, metrics

  def eval_sums(self, outputs, batch: dict) -> dict:
    logits, _ = outputs
    weight = batch["weight"]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    return {"count": weight.sum(), "loss": (loss * weight).sum(),
            "correct": ((jnp.argmax(logits, -1) == batch["label"]) * weight).sum(),
            "centre_error": (self._centre_error(outputs, batch) * weight).sum()}

  def finalize(self, sums: dict) -> dict:
    count = float(sums["count"])
    return {"accuracy": float(sums["correct"]) / count, "loss": float(sums["loss"]) / count,
            "centre_error": float(sums["centre_error"]) / count}

  def summary(self, metrics: dict) -> str:
    return (f"accuracy {metrics['accuracy']:.4f}, centre off by {metrics['centre_error']:.2f} px, "
            f"loss {metrics['loss']:.4f}")

  def predictions(self, model: nn.Module, variables: dict, images: jax.Array) -> dict:
    logits, features = base.jitted_apply(model)(variables, images)
    return {"label": np.asarray(jnp.argmax(logits, -1)),
            "centre": np.asarray(features["centre"][:, 0])}  # (B, 2) (y, x) pixels
