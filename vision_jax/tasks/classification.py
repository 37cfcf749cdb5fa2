"""Image classification: softmax cross-entropy, top-1 / top-5 accuracy and error."""

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
import tensorflow_datasets as tfds

from vision_jax import models
from vision_jax.evaluate import classification
from vision_jax.models import precision
from vision_jax.tasks import base


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float) -> jax.Array:
  """Per-example softmax cross-entropy with optional label smoothing. logits: (B, K)."""
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)  # (B,)


@dataclasses.dataclass(frozen=True)
class ClassificationTask(base.Task):
  """One label per image.

  Attributes:
    label_smoothing: mass spread uniformly over all classes in the training loss.
    aux_loss_weight: weight of each auxiliary classifier's loss (features `aux*`, e.g.
      GoogLeNet's two heads in training); the total is what gets minimised.
  """
  label_smoothing: float = 0.0
  aux_loss_weight: float = 0.3

  metric_names: ClassVar[tuple[str, ...]] = ("accuracy", "top5_accuracy", "loss")
  curve_metric: ClassVar[str] = "accuracy"

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "ClassificationTask":
    return cls(label_smoothing=config.train.label_smoothing,
               aux_loss_weight=config.train.aux_loss_weight)

  def build_model(self, config: ml_collections.ConfigDict,
                  builder: tfds.core.DatasetBuilder) -> nn.Module:
    return models.get_model(config.model.name,
                            num_classes=builder.info.features["label"].num_classes,
                            **precision.dtypes(config.model.dtype), **config.model.kwargs)

  def loss(self, outputs, batch: dict) -> tuple[jax.Array, dict]:
    logits, features = outputs
    labels = batch["label"]
    loss = cross_entropy(logits, labels, self.label_smoothing).mean()
    aux_losses = [cross_entropy(features[k], labels, self.label_smoothing).mean()
                  for k in sorted(features) if k.startswith("aux")]
    total = loss + self.aux_loss_weight * sum(aux_losses)
    return total, {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}

  def eval_sums(self, outputs, batch: dict) -> dict:
    logits, _ = outputs
    loss = cross_entropy(logits, batch["label"], 0.0)
    return classification.weighted_sums(logits, batch["label"], loss, batch["weight"])

  def finalize(self, sums: dict) -> dict:
    return classification.finalize(sums)

  def summary(self, metrics: dict) -> str:
    return (f"accuracy {metrics['accuracy']:.4f} (top-5 {metrics['top5_accuracy']:.4f}), "
            f"loss {metrics['loss']:.4f}")
