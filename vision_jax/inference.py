"""A trained model back from its workdir, ready to run on images: task, model, weights, config.

Training writes `config.json` and Orbax checkpoints of the whole train state into its workdir.
Inference needs much less: the config to rebuild the model through the workdir's task (any
task, a paper's own too: `config.imports` is imported first), and the parameters and BatchNorm
statistics. Those are restored as host numpy arrays, so
a checkpoint written on 8 devices loads on 1 (or the other way round), and the optimiser state is
not read.
"""

import dataclasses
import json
import os

import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from vision_jax import config as config_lib
from vision_jax import errors, tasks
from vision_jax.data import datasets, transforms
from vision_jax.models import precision
from vision_jax.train import weights



@dataclasses.dataclass(frozen=True)
class Loaded:
  """A restored model.

  Attributes:
    task: the workdir's task (`config.task`), ready (e.g. with its vocabulary).
    model: the task's model, unbound.
    variables: `{"params", "batch_stats"}` as numpy arrays (EMA parameters when the run kept
      them); pass to `model.apply(variables, images, train=False)`.
    config: the run's config.
    info: the dataset's name, class count and image shape.
    class_names: a name per image-level label (`str(label)` when the dataset names none; ()
      when it has no `label`).
    image_shape: (H, W, C) the model expects, after `preprocess`.
    step: the checkpoint's step.
  """
  task: tasks.Task
  model: object
  variables: dict
  config: ml_collections.ConfigDict
  info: datasets.DatasetInfo
  class_names: tuple[str, ...]
  image_shape: tuple[int, int, int]
  step: int

  def preprocess(self, images: np.ndarray) -> np.ndarray:
    """`preprocess(images, self.config)`, checked against the model's input shape."""
    return preprocess(images, self.config, self.image_shape)

  def predict(self, images: np.ndarray) -> dict:
    """The task's predictions for uint8 images (B, H, W, C), or one image (H, W, C).

    Images are preprocessed as evaluation does (resized to `input.image_size` when the run
    set it, normalised). What comes back is the task's (`Task.predictions`): e.g. `label` and
    `probabilities` for classification, `mask` for segmentation, `detections` for detection,
    `caption` for captioning; for one image, each array or list has a batch of one.
    """
    images = np.asarray(images)
    if images.ndim == 3:
      images = images[None]
    return self.task.predictions(self.model, self.variables, self.preprocess(images))


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a training run wrote into `workdir/config.json`; fields added to the schema
  since (e.g. `train.mixup_alpha`) take their defaults, so older workdirs still load."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise errors.MissingFileError(
        f"{path} does not exist: {workdir!r} is not a training workdir (train with "
        "`python -m vision_jax.main --config=... --workdir=...` first).")
  with open(path) as f:
    return ml_collections.ConfigDict(
        _with_defaults(json.load(f), config_lib.base_config().to_dict()))


def _with_defaults(saved: dict, defaults: dict) -> dict:
  """`saved`, plus the entries of `defaults` it lacks (recursively); saved values win."""
  merged = dict(saved)
  for key, value in defaults.items():
    if key not in merged:
      merged[key] = value
    elif isinstance(value, dict) and isinstance(merged[key], dict):
      merged[key] = _with_defaults(merged[key], value)
  return merged


def load_for_inference(workdir: str, step: int | None = None,
                       dtype: str | None = None) -> Loaded:
  """Rebuilds a workdir's model and restores its weights from a checkpoint.

  Args:
    workdir: a training run's output directory (`config.json`, `checkpoints/`).
    step: the checkpoint to load; None for the newest intact one.
    dtype: precision ("float32", "bfloat16", "float64"); None keeps the run's
      `config.model.dtype`.

  Returns:
    A `Loaded` model.

  Raises:
    FileNotFoundError: when `workdir` has no `config.json` or no checkpoint.
    ValueError: when `step` is not among the saved steps (the message lists them).
  """
  workdir = os.path.abspath(workdir)
  config = read_config(workdir)
  config_lib.import_modules(config.imports)  # Before the task and model names are looked up.
  task = tasks.get_task(config)
  directory = os.path.join(workdir, "checkpoints")
  step, variables = weights.restore_newest_variables(directory, step)
  datasets.check_name(config.dataset.name)
  # The builder's static info (classes, image shape) needs no prepared data.
  builder = tfds.builder(config.dataset.name, data_dir=config.dataset.data_dir)
  info = datasets.info(builder)
  names = ()
  if info.num_classes is not None:
    label = builder.info.features["label"]
    names = tuple(label.names) if label.names else tuple(str(i) for i in range(info.num_classes))
  task = task.prepare(builder, None, workdir)  # Reads what training saved (e.g. vocab.json).
  if dtype is not None:  # `config` is this call's own copy.
    config.model.dtype = dtype
  precision.dtypes(config.model.dtype)  # float64 without JAX's 64-bit mode fails here.
  model = task.build_model(config, builder)
  size, channels = config.input.image_size, builder.info.features["image"].shape[-1]
  image_shape = info.image_shape if size is None else (size, size, channels)
  return Loaded(task=task, model=model, variables=variables, config=config,
                info=info, class_names=names, image_shape=tuple(image_shape), step=step)


def resize(images: np.ndarray, config: ml_collections.ConfigDict) -> np.ndarray:
  """uint8 images (B, H, W, C) at the size evaluation feeds the model (`input.image_size`)."""
  if config.input.image_size is None:
    return images
  return np.stack([transforms.resize_and_center_crop({"image": im}, config.input.image_size)
                   ["image"] for im in images])


def check_images(images: np.ndarray, image_shape: tuple[int, int, int] | None = None,
                 resized: bool = False) -> None:
  """Raises a `UserError` unless `images` is a batch (B, H, W, C) the model takes.

  Args:
    images: the batch.
    image_shape: (H, W, C) of the model's input (`Loaded.image_shape`); None checks the rank
      and emptiness only.
    resized: whether H and W may differ (`preprocess` resizes them to `input.image_size`).
  """
  shape = tuple(np.shape(images))
  want = "(B, H, W, C)" if image_shape is None else "(B, {}, {}, {})".format(*image_shape)
  if len(shape) != 4:
    hint = "; for one image add the batch axis: images[None]" if len(shape) == 3 else ""
    raise errors.UserError(f"Images of shape {shape}: the model takes a batch {want}{hint}.")
  if 0 in shape:
    raise errors.UserError(f"Images of shape {shape} are empty; the model takes {want}.")
  if image_shape is None:
    return
  if shape[-1] != image_shape[-1]:
    raise errors.UserError(
        f"Images of shape {shape} have {shape[-1]} channel(s), the model takes {want}: convert "
        "them (PIL: .convert('RGB') or .convert('L')), or read files with `read_image`.")
  if not resized and shape[1:3] != tuple(image_shape[:2]):
    raise errors.UserError(f"Images of shape {shape}: the model takes {want}.")


def preprocess(images: np.ndarray, config: ml_collections.ConfigDict,
               image_shape: tuple[int, int, int] | None = None) -> np.ndarray:
  """uint8 images (B, H, W, C) as the model saw them in evaluation: resized, normalised.

  Args:
    images: (B, H, W, C) uint8 (channels as the dataset has them).
    config: the run's config (`input.image_size`, `input.mean`, `input.std`).
    image_shape: the model's (H, W, C) (`Loaded.image_shape`), to check `images` against.

  Returns:
    (B, H', W', C) float32.

  Raises:
    errors.UserError: for images that are no batch or have the wrong channels (or size, when
      the run kept the dataset's size).
  """
  check_images(images, image_shape, resized=config.input.image_size is not None)
  channels = len(config.input.mean)
  if image_shape is None and channels > 1 and np.shape(images)[-1] != channels:
    raise errors.UserError(
        f"Images of shape {np.shape(images)} have {np.shape(images)[-1]} channel(s), but the run "
        f"normalised {channels} (config.input.mean={tuple(config.input.mean)}); convert them.")
  images = resize(images, config)
  mean = np.asarray(config.input.mean, np.float32)
  std = np.asarray(config.input.std, np.float32)
  return transforms.normalize({"image": images}, mean, std)["image"]


def eval_examples(config: ml_collections.ConfigDict,
                  indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
  """Images and labels from the run's eval split, by index (prepares the dataset if needed).

  Returns:
    (B, H, W, C) uint8 images, before resizing, and (B,) int labels.
  """
  builder = datasets.builder_from_config(config.dataset)
  source = datasets.open_split(builder, config.dataset.eval_split)
  bad = [i for i in indices if not 0 <= i < len(source)]
  if bad:
    raise errors.UserError(f"Indices {bad} are outside the {config.dataset.eval_split!r} split "
                           f"(0 to {len(source) - 1}).")
  examples = [source[i] for i in indices]
  return (np.stack([e["image"] for e in examples]),
          np.array([int(e["label"]) for e in examples]))


def read_image(path: str, image_shape: tuple[int, int, int]) -> np.ndarray:
  """An image file (PNG, JPEG, ...) as the model's input size and channels, (H, W, C) uint8.

  The shorter side is resized to the model's size, then the centre is cropped.
  """
  h, w, c = image_shape
  if h != w:
    raise errors.UserError(f"Only square model inputs are supported, not {image_shape}.")
  if not os.path.isfile(path):
    raise errors.MissingFileError(f"Image file {path!r} does not exist.")
  try:
    image = np.asarray(Image.open(path).convert("L" if c == 1 else "RGB"))
  except (OSError, SyntaxError) as e:  # PIL: unreadable or not an image.
    raise errors.UserError(f"{path} is not an image file PIL can read ({e}).") from e
  image = image[..., None] if c == 1 else image
  return transforms.resize_and_center_crop({"image": image}, h)["image"]

