"""What a kind of problem (classification, segmentation, ...) adds to the shared training loop.

The loop (data, compiled steps over devices, checkpoints, resume, preemption, logging) is the
same for every task; a `Task` says which features a batch holds, how to build the model, the
training loss, and the evaluation metrics. Evaluation sums are added over batches, devices and
processes and turned into metrics once, so they are exact whatever the topology.
"""

from collections.abc import Callable
import dataclasses
import functools
import os
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from vision_jax import sharding
from vision_jax.data import datasets, pipeline, transforms


@dataclasses.dataclass(frozen=True)
class Task:
  """Base class: classification-shaped defaults that tasks override where they differ.

  Subclasses are frozen dataclasses (hashable: they are static arguments of compiled steps).
  """
  # Features of an example that batches carry (read from the dataset, before `example_transform`).
  keys: ClassVar[tuple[str, ...]] = ("image", "label")
  # Feature → kind (`transforms.KINDS`) of every batch feature (after `example_transform`): how
  # geometric augmentation moves it (images, masks, boxes, points; "other" stays). The pipeline
  # refuses a feature without one. Default {"image": "image", "label": "other"}.
  feature_kinds: ClassVar[transforms.FeatureKinds] = transforms.DEFAULT_KINDS
  # Eval metrics a checkpoint may be ranked by (`train.best_metric`), and which are better low.
  metric_names: ClassVar[tuple[str, ...]] = ("loss",)
  lower_is_better: ClassVar[tuple[str, ...]] = ("loss",)
  # The eval metric plotted next to the loss in `curves.png`.
  curve_metric: ClassVar[str] = "loss"
  # Folder of the workdir that the task's eval pictures go to ("": it draws none).
  picture_dir: ClassVar[str] = ""
  # Whether `augment_batch` implements mixup / CutMix (`train.mixup_alpha`, `cutmix_alpha`) and
  # `merge_flipped` flip averaging (`train.eval_flip`); `config.validate` refuses them otherwise.
  supports_mixing: ClassVar[bool] = False
  supports_eval_flip: ClassVar[bool] = False
  # Whether the loop's compiled pass over the eval split (`eval_sums`, `finalize`) gives
  # metrics. False for a task whose `evaluate_extra` runs the model over the split anyway and
  # reports those metrics from that pass (detection), so the model runs once per eval; the pass
  # still gives the live weights' `raw/` metrics next to an EMA's.
  summed_eval: ClassVar[bool] = True

  def picture_path(self, workdir: str, step: int) -> str:
    """Where the eval pictures of `step` are drawn: `workdir/<picture_dir>/step_<step>.png`
    (the loop also sends them to TensorBoard and W&B)."""
    return os.path.join(workdir, self.picture_dir, f"step_{step:07d}.png")

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "Task":
    """The task with its settings from `config` (`tasks.get_task` calls it for `config.task`).

    A task with settings reads them from its own config section or from `config.model.kwargs`;
    one without needs no override.
    """
    del config
    return cls()

  @classmethod
  def head_fields(cls) -> frozenset[str]:
    """`config.model.kwargs` the task's own model takes; the others go to `config.model.name`."""
    return frozenset()

  @classmethod
  def validate_config(cls, config: ml_collections.ConfigDict) -> None:
    """Raises a `UserError` naming `config.<field>` for a bad value of the task's own settings
    (`config.validate` calls it, before anything is built); nothing to check by default."""
    del config

  def check_dataset(self, builder: tfds.core.DatasetBuilder) -> None:
    """Raises a `UserError` when the dataset lacks a feature the task reads (tasks whose
    features a config field names override this to name the field)."""
    datasets.check_features(builder, dict.fromkeys(self.dataset_keys().values()))

  def prepare(self, builder: tfds.core.DatasetBuilder, train_source, workdir: str) -> "Task":
    """The task ready for this dataset and run (e.g. with a vocabulary); itself by default."""
    del builder, train_source, workdir
    return self

  def example_transform(self, example: dict) -> dict:
    """Per-example preprocessing after selecting `keys` (e.g. text → token ids); none here."""
    return example

  def dataset_keys(self) -> dict[str, str]:
    """Batch key → the dataset feature it is read from (the same name unless a task renames,
    e.g. segmentation reads `mask` from `segmentation_mask`)."""
    return {k: k for k in self.keys}

  def build_model(self, config: ml_collections.ConfigDict,
                  builder: tfds.core.DatasetBuilder) -> nn.Module:
    """The model for `config.model`, sized for the dataset."""
    raise NotImplementedError

  def init_inputs(self, image_shape: tuple[int, ...]) -> tuple:
    """Example inputs (batch of 1) that `model.init` is traced with."""
    return (jnp.zeros((1, *image_shape), jnp.float32),)

  def model_inputs(self, batch: dict) -> tuple:
    """The positional inputs of `model.apply` from a batch."""
    return (batch["image"],)

  def augment_batch(self, batch: dict, rng: jax.Array, axis_name: str | None = None) -> dict:
    """Batch-level augmentation inside the compiled train step (e.g. mixup); none here.

    Args:
      batch: the global batch under `jit`; one device's share under `pmap` (rows in device
        order: `axis_name` reaches the others, see `vision_jax.ops.mixing.partner`).
      rng: drawn from the run's key and the step only, the same on every device.
      axis_name: pmap's device axis, or None under `jit`.
    """
    del rng, axis_name
    return batch

  def merge_flipped(self, outputs: Any, mirrored_outputs: Any) -> Any:
    """Eval outputs averaged with those of the horizontally mirrored images (`train.eval_flip`),
    mapped back onto the original pixels where they are spatial; what `eval_sums` takes."""
    raise NotImplementedError(f"{type(self).__name__} has no flip averaging.")

  def loss(self, outputs: Any, batch: dict) -> tuple[jax.Array, dict]:
    """`(total loss to minimise, metrics)`; metrics are scalar means and include `loss`.

    Metrics may include `weight`: how many items (pixels, tokens) the means are over, when that
    differs between batches. The train step then weighs devices (pmap) and micro-batches
    (gradient accumulation) by it, so their average is the mean over the whole batch (as one
    global-batch step computes it). Without it every device and micro-batch weighs the same.
    """
    raise NotImplementedError

  def eval_sums(self, outputs: Any, batch: dict) -> dict:
    """Per-batch sums (padding has `batch["weight"]` 0), added up over the eval set."""
    raise NotImplementedError

  def finalize(self, sums: dict) -> dict:
    """The reported eval metrics from the accumulated sums (host values)."""
    raise NotImplementedError

  def summary(self, metrics: dict) -> str:
    """One line for the console after an eval."""
    return f"loss {metrics['loss']:.4f}"

  def predictions(self, model: nn.Module, variables: dict, images: jax.Array) -> dict:
    """What the model says about a batch of preprocessed images, as host arrays (inference).

    The classification default: `label` (B,) and `probabilities` (B, K) of the softmax.

    Args:
      model: the task's model (`build_model`).
      variables: its `{"params", "batch_stats"}`.
      images: (B, H, W, C) float32, preprocessed as evaluation does.
    """
    logits, _ = jitted_apply(model)(variables, images)
    probabilities = np.asarray(jax.nn.softmax(logits.astype(jnp.float32), -1))
    return {"label": probabilities.argmax(-1), "probabilities": probabilities}

  def evaluate_extra(self, context: "EvalContext") -> dict:
    """Eval metrics that are no sums of batches (e.g. BLEU of decoded captions, mAP); none here.

    Runs after the summed metrics (`eval_sums`, `finalize`), on every process: every process
    runs the same computations on `context.variables` (global arrays that may span processes:
    a jitted call on them is collective, and waits forever if one process skips it), with
    replicated inputs and outputs (`sharding.replicated(context.mesh)`). A task whose pass here
    also gives its summed metrics sets `summed_eval = False`, so the model runs once per eval.
    """
    del context
    return {}

  def draw_pictures(self, context: "EvalContext") -> str | None:
    """Draws the eval pictures of `context.step`; returns their path on process 0, else None.

    Runs after `evaluate_extra`, on every process (what it predicts is collective, as there);
    only process 0 writes, to `picture_path` (the loop also sends the picture to TensorBoard and
    W&B under `eval/<picture_dir>`). Nothing by default.
    """
    del context
    return None


@dataclasses.dataclass(frozen=True)
class EvalContext:
  """What the evaluation hooks (`Task.evaluate_extra`, `Task.draw_pictures`) get.

  Attributes:
    model: the task's model (`build_model`); `model.apply` runs it.
    variables: its eval `{"params", "batch_stats"}` (the EMA's when the run keeps one), global
      arrays that may span processes.
    config: the experiment config.
    eval_source: the eval split (random access, as `datasets.open_split` returns it).
    mesh: the run's device mesh.
    workdir: the run's output directory.
    step: the step evaluated.
  """
  model: nn.Module
  variables: dict
  config: ml_collections.ConfigDict
  eval_source: Any
  mesh: jax.sharding.Mesh
  workdir: str
  step: int


@functools.lru_cache(maxsize=16)
def jitted_apply(model: nn.Module, mesh: jax.sharding.Mesh | None = None,
                 postprocess: Callable[[Any], Any] | None = None):
  """`model.apply(variables, *inputs, train=False)`, jitted once per (model, mesh, postprocess)
  and cached, so evaluations after the first reuse it (modules hash by their fields).

  Args:
    model: the task's model.
    mesh: outputs replicated on every device of it, so that every process can read them
      (evaluation pictures and predictions in multi-process runs); None: jit's default placement.
    postprocess: a module-level function of the model's outputs run inside the jit, e.g. an
      argmax, so that only what is needed leaves the devices.
  """
  def apply(variables, *inputs):
    outputs = model.apply(variables, *inputs, train=False)
    return outputs if postprocess is None else postprocess(outputs)
  replicated = {} if mesh is None else {"out_shardings": sharding.replicated(mesh)}
  return jax.jit(apply, **replicated)


def replicated_eval_batches(task: "Task", source, config: ml_collections.ConfigDict,
                            mesh: jax.sharding.Mesh, count: int):
  """The shared predict/decode loop: eval batches of the first `count` images of `source`, each
  with its images replicated on every device of `mesh` (every process reads the whole split,
  so every process gets every prediction), stopping before a batch that is not needed.

  Yields:
    `(batch, images, real)`: the host batch, its images as a global replicated array, and how
    many of its examples are still wanted (the rest are padding or beyond `count`).
  """
  done = 0
  replicated = sharding.replicated(mesh)
  for batch in pipeline.eval_batches(source, pipeline.InputOptions.from_config(config.input),
                                     keys=task.keys, kinds=task.feature_kinds,
                                     example_fn=task.example_transform, shard=False):
    real = min(int(batch["weight"].sum()), count - done)
    yield batch, sharding.to_global({"image": batch["image"]}, replicated)["image"], real
    done += real
    if done >= count:
      return


def merge_flipped_logits(logits: jax.Array, mirrored: jax.Array) -> jax.Array:
  """Log of the mean softmax of two predictions, (..., K): logits whose softmax is the average
  of both probabilities (computed in log space: finite even where a probability underflows)."""
  dtype = jnp.promote_types(logits.dtype, jnp.float32)  # float64 stays float64.
  both = jnp.logaddexp(jax.nn.log_softmax(logits.astype(dtype), -1),
                       jax.nn.log_softmax(mirrored.astype(dtype), -1))
  return both - jnp.log(2.0).astype(dtype)


def config_fields(cls: type, section: ml_collections.ConfigDict | None = None,
                  exclude: tuple[str, ...] | frozenset[str] = ()) -> dict[str, Any]:
  """The fields of the dataclass or Flax module `cls` that a task's config section holds: all
  but `exclude` (what the task sets from elsewhere) and Linen's `parent` and `name`.

  Without `section`, with their defaults: what a task's `default_config` is made of, so a
  default is written once (on `cls`) and a field added to `cls` is a config field. With it, with
  the values `section` gives them (a list, as a command line may give one, as a tuple: tasks and
  models are hashed, static arguments of compiled steps): what `from_config` passes to `cls`.
  """
  fields = {f.name: f.default for f in dataclasses.fields(cls)
            if f.name not in exclude and f.name not in ("parent", "name")}
  if section is None:
    return fields
  return {name: hashable(section[name]) for name in fields}


def hashable(value: Any) -> Any:
  """A config's list (a command line's `--config.detection.anchor_sizes=[8,16]`) as a tuple:
  tasks and models are hashed (static arguments of compiled steps); other values unchanged."""
  return tuple(value) if isinstance(value, list) else value


def metric_tag(name: str) -> str:
  """A class name as a metric name (no slashes or spaces), e.g. `iou/<tag>`."""
  return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
