"""Image classification: softmax cross-entropy (on mixed targets with mixup / CutMix), top-1 /
top-5 accuracy and error, optionally of flip-averaged predictions."""

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
import tensorflow_datasets as tfds

from vision_jax import models
from vision_jax.models import precision
from vision_jax.ops import mixing
from vision_jax.tasks import base
from vision_jax.tasks.classification import metrics as classification


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float) -> jax.Array:
  """Per-example softmax cross-entropy with optional label smoothing. logits: (B, K)."""
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)  # (B,)


def training_targets(batch: dict, num_classes: int, label_smoothing: float) -> jax.Array:
  """(B, K) soft targets: one-hot labels, mixed with the partners' (`label_mix`, weight
  `mix_weight` (B,) on the own label) when the batch was mixed, then smoothed. Cross-entropy is
  linear in the targets, so this equals λ CE(label) + (1 - λ) CE(partner's label)."""
  targets = jax.nn.one_hot(batch["label"], num_classes)
  if "label_mix" in batch:
    targets = mixing.mix_targets(targets, jax.nn.one_hot(batch["label_mix"], num_classes),
                                 batch["mix_weight"][:, None])
  return optax.smooth_labels(targets, label_smoothing)


@dataclasses.dataclass(frozen=True)
class ClassificationTask(base.Task):
  """One label per image.

  Attributes:
    label_smoothing: mass spread uniformly over all classes in the training loss.
    aux_loss_weight: weight of each auxiliary classifier's loss (features `aux*`, e.g.
      GoogLeNet's two heads in training); the total is what gets minimised.
    mix: mixup / CutMix of training batches (`augment_batch`); off by default.
  """
  label_smoothing: float = 0.0
  aux_loss_weight: float = 0.3
  mix: mixing.MixOptions = mixing.MixOptions()

  metric_names: ClassVar[tuple[str, ...]] = ("accuracy", "top5_accuracy", "loss")
  curve_metric: ClassVar[str] = "accuracy"
  supports_mixing: ClassVar[bool] = True
  supports_eval_flip: ClassVar[bool] = True

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "ClassificationTask":
    t = config.train
    return cls(label_smoothing=t.label_smoothing, aux_loss_weight=t.aux_loss_weight,
               mix=mixing.MixOptions(mixup_alpha=t.mixup_alpha, cutmix_alpha=t.cutmix_alpha,
                                     prob=t.mix_prob, switch_prob=t.mix_switch_prob))

  def build_model(self, config: ml_collections.ConfigDict,
                  builder: tfds.core.DatasetBuilder) -> nn.Module:
    return models.get_model(config.model.name,
                            num_classes=builder.info.features["label"].num_classes,
                            **precision.dtypes(config.model.dtype), **config.model.kwargs)

  def augment_batch(self, batch: dict, rng: jax.Array, axis_name: str | None = None) -> dict:
    """mixup / CutMix (`ops.mixing`) when on: the mixed images, the partners' labels
    `label_mix` (B,) and the own labels' weight `mix_weight` (B,)."""
    if not self.mix.enabled:
      return batch
    images, lam = mixing.mix_images(batch["image"], rng, self.mix, axis_name)
    return {**batch, "image": images, "label_mix": mixing.partner(batch["label"], axis_name),
            "mix_weight": jnp.full(batch["label"].shape, lam)}

  def loss(self, outputs, batch: dict) -> tuple[jax.Array, dict]:
    logits, features = outputs
    targets = training_targets(batch, logits.shape[-1], self.label_smoothing)
    loss = optax.softmax_cross_entropy(logits, targets).mean()
    aux_losses = [optax.softmax_cross_entropy(features[k], targets).mean()
                  for k in sorted(features) if k.startswith("aux")]
    total = loss + self.aux_loss_weight * sum(aux_losses)
    labels = batch["label"]
    if "label_mix" in batch:  # Accuracy against the label of the larger share.
      labels = jnp.where(batch["mix_weight"] >= 0.5, labels, batch["label_mix"])
    return total, {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}

  def merge_flipped(self, outputs, mirrored_outputs):
    """Flip averaging: the mean of both softmaxes, as log-probabilities (`eval_sums` takes
    them as logits: the same argmax, and the loss of the averaged probabilities)."""
    logits, features = outputs
    return base.merge_flipped_logits(logits, mirrored_outputs[0]), features

  def eval_sums(self, outputs, batch: dict) -> dict:
    logits, _ = outputs
    loss = cross_entropy(logits, batch["label"], 0.0)
    return classification.weighted_sums(logits, batch["label"], loss, batch["weight"])

  def finalize(self, sums: dict) -> dict:
    return classification.finalize(sums)

  def summary(self, metrics: dict) -> str:
    return (f"accuracy {metrics['accuracy']:.4f} (top-5 {metrics['top5_accuracy']:.4f}), "
            f"loss {metrics['loss']:.4f}")
