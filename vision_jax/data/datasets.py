"""Finds a dataset by name, prepares its array_record files once, and opens a split.

Our own builders (`vision_jax.data.builders.BUILDERS`) and every stock TFDS dataset go through
the same path: `tfds.builder` → `download_and_prepare(file_format='array_record')` →
`tfds.data_source`, a random-access source of numpy dicts that grain reads without TensorFlow.
Our builders also prepare without TensorFlow (they store PNGs encoded with PIL); stock TFDS
datasets whose builders hand TFDS numpy images need it (the `prepare` extra) for that one step.
"""

from collections.abc import Mapping, Sequence
import dataclasses
import importlib.util

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from vision_jax import errors
from vision_jax.data import builders


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the rest of the code needs to know about a dataset."""
  name: str
  num_classes: int | None  # Of the image-level `label`; None when the dataset has none.
  image_shape: tuple[int, ...] | None  # (H, W, C); None when images vary in size.


def _base_name(name: str) -> str:
  return name.split("/")[0].split(":")[0]


def check_name(name: str) -> None:
  """Raises a UserError naming the valid choices when `name` is no known dataset."""
  base = _base_name(name)
  if base in builders.BUILDERS or base in tfds.list_builders(with_community_datasets=False):
    return
  raise errors.UserError(
      f"Unknown dataset {name!r}; valid choices: the project's own {sorted(builders.BUILDERS)} "
      "or any TFDS dataset name (e.g. 'mnist', 'cifar10', 'cifar100', 'imagenet2012'; "
      "see tfds.list_builders()).")


def get_builder(name: str, data_dir: str | None = None, manual_dir: str | None = None,
                prepare: bool = True) -> tfds.core.DatasetBuilder:
  """Returns the TFDS builder for dataset `name`, preparing it first if asked and needed.

  Args:
    name: ours (`vision_jax.data.builders.BUILDERS`, e.g. "synthetic_shapes/size32") or any
      TFDS name, with its config and version ("cifar10", "voc/2007:5.*.*").
    data_dir: TFDS data directory; None: TFDS's default.
    manual_dir: where builders that read local raw files find them.
    prepare: build the array_record files when they are missing.

  Raises:
    errors.UserError: for an unknown name.
    errors.MissingFileError: when the data is not prepared and `prepare` is False.
  """
  check_name(name)
  builder = _builder(name, data_dir)
  if jax.process_count() > 1:
    # Process 0 prepares first (a shared file system then serves everyone); a process that
    # still finds nothing has a disk of its own and prepares there.
    if jax.process_index() == 0:
      _prepare(builder, name, manual_dir, prepare)
    multihost_utils.sync_global_devices(f"prepared {name}")
    builder = _builder(name, data_dir)
  _prepare(builder, name, manual_dir, prepare)
  return builder


def builder_from_config(section: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """`get_builder` for the `dataset` section of an experiment config."""
  return get_builder(section.name, data_dir=section.data_dir, manual_dir=section.manual_dir,
                     prepare=section.prepare)


def _builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
  """`tfds.builder`, with an unknown config or version of a known dataset as a `UserError`."""
  try:
    return tfds.builder(name, data_dir=data_dir, file_format="array_record")
  except (ValueError, AssertionError) as error:  # TFDS: "Failed to construct dataset ...: why"
    why = " ".join(str(error).split('": ', 1)[-1].split()).split(" Here are")[0].rstrip(".")
    configs = getattr(tfds.builder_cls(_base_name(name)), "builder_configs", {})
    valid = f"; valid: {', '.join(_base_name(name) + '/' + c for c in configs)}"
    raise errors.UserError(f"config.dataset.name={name!r}: {why}"
                           f"{valid if configs else ''}") from error


def _prepare(builder: tfds.core.DatasetBuilder, name: str, manual_dir: str | None,
             prepare: bool) -> None:
  if builder.is_prepared():
    return
  if not prepare:
    raise errors.MissingFileError(
        f"Dataset {name!r} is not prepared in {builder.data_dir!r} and "
        "config.dataset.prepare=False; prepare it once, e.g. "
        f"`python -m vision_jax.data.prepare {name}`.")
  download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
  try:
    builder.download_and_prepare(file_format="array_record", download_config=download_config)
  except ImportError as error:  # TFDS re-raises it with a prefix, without its `.name`.
    if "tensorflow" not in str(error) or importlib.util.find_spec("tensorflow") is not None:
      raise
    raise errors.UserError(
        f"Preparing dataset {name!r} needs TensorFlow, which is not installed (the "
        "training install leaves it out: our own builders and training do not need it). "
        "Install the `prepare` extra, `pip install -r requirements-prepare.txt` (or "
        "`pip install -e '.[prepare]'`), and run again; TFDS keeps what it has downloaded. "
        "Or prepare on another machine with "
        f"`python -m vision_jax.data.prepare {name}` and copy the data directory "
        "here.") from error


def info(builder: tfds.core.DatasetBuilder) -> DatasetInfo:
  """Summarises a prepared builder for model construction and step counting."""
  features = builder.info.features
  shape = features["image"].shape
  label = features["label"] if "label" in features else None
  return DatasetInfo(
      name=builder.info.full_name,
      num_classes=getattr(label, "num_classes", None),
      image_shape=tuple(shape) if None not in shape else None)


def split_sizes(builder: tfds.core.DatasetBuilder) -> str:
  """The dataset's splits with their sizes, e.g. "train (20000), test (2000)"."""
  return ", ".join(f"{k} ({v.num_examples})" for k, v in builder.info.splits.items())


def check_split(builder: tfds.core.DatasetBuilder, split: str) -> int | None:
  """The number of examples of `split` (TFDS syntax: "train", "train[:10%]", "train+test").

  None when the builder records no splits (e.g. under `tfds.testing.mock_data`).

  Raises:
    errors.UserError: naming the split and the dataset's splits, when it is unknown or empty.
  """
  name = builder.info.full_name
  if not builder.info.splits:
    return None
  try:
    size = builder.info.splits[split].num_examples
  except (KeyError, ValueError) as error:
    raise errors.UserError(
        f"Dataset {name!r} has no split {split!r} ({str(error).splitlines()[0]}); its splits: "
        f"{split_sizes(builder)}. Set config.dataset.train_split / eval_split.") from error
  if not size:
    raise errors.UserError(
        f"Split {split!r} of dataset {name!r} is empty; its splits: {split_sizes(builder)}. "
        "Set config.dataset.train_split / eval_split to a non-empty one.")
  return size


def _has_feature(features, path: str) -> bool:
  for part in path.split("/"):
    features = getattr(features, "feature", features)  # Into a `Sequence`.
    if not hasattr(features, "keys") or part not in features.keys():
      return False
    features = features[part]
  return True


def check_features(builder: tfds.core.DatasetBuilder, wanted: Mapping[str, str | None]) -> None:
  """Raises a `UserError` when the dataset lacks one of the `wanted` features.

  Args:
    builder: the dataset.
    wanted: feature (a path such as "captions/text" for nested ones) → the config field that
      names it (e.g. "segmentation.mask_key"), or None when the task always reads that feature.
  """
  features = builder.info.features
  for path, field in wanted.items():
    if not _has_feature(features, path):
      where = f" (config.{field}={path!r})" if field else ", which the task reads"
      fix = f"set config.{field} to one of them, or pick" if field else "pick"
      raise errors.UserError(
          f"Dataset {builder.info.full_name!r} has no feature {path!r}{where}; its features: "
          f"{sorted(features.keys())}. {fix.capitalize()} a dataset that has it.")


def open_split(builder: tfds.core.DatasetBuilder, split: str,
               keys: Sequence[str] | Mapping[str, str] = ("image", "label"),
               in_memory: bool = False):
  """Returns a random-access source of numpy dicts for `split` (no TensorFlow needed).

  Args:
    builder: a prepared builder.
    split: split name (TFDS syntax); an unknown or empty one is a `UserError`.
    keys: the top-level features the task uses; other images (e.g. masks) are not decoded. A
      mapping {key: feature} renames: examples then hold `key`, read from `feature`.
    in_memory: decode the whole split once into numpy arrays (for datasets that fit in RAM:
      decoding then costs nothing per epoch).
  """
  rename = dict(keys) if isinstance(keys, Mapping) else {}
  features = set(rename.values()) if rename else set(keys)
  check_split(builder, split)
  check_features(builder, dict.fromkeys(sorted(features)))
  decoders = {k: tfds.decode.SkipDecoding() for k, feature in builder.info.features.items()
              if k not in features and isinstance(feature, tfds.features.Image)}
  source = builder.as_data_source(split=split, decoders=decoders or None)
  if any(key != feature for key, feature in rename.items()):
    source = RenamedSource(source, rename)
  keys = list(rename) if rename else keys
  return InMemorySource(source, keys) if in_memory else source


class RenamedSource:
  """A source whose examples hold `key` for each `{key: feature}` of `rename` (nothing else).

  Args:
    source: a random-access source of example dicts.
    rename: batch key → the source's feature name.
  """

  def __init__(self, source, rename: Mapping[str, str]):
    self._source, self._rename = source, dict(rename)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    example = self._source[index]
    return {key: example[feature] for key, feature in self._rename.items()}

  def __getitems__(self, indices) -> list[dict]:
    return [{key: ex[feature] for key, feature in self._rename.items()}
            for ex in self._source.__getitems__(indices)]

  def __repr__(self) -> str:  # Stable across runs: grain stores it in the iterator state.
    return f"RenamedSource({self._source!r}, {self._rename})"


class InMemorySource:
  """A split decoded once into one numpy array per feature, read by index like the original.

  Args:
    source: a random-access source of example dicts.
    keys: features to keep.
    chunk: examples decoded per batched read.
  """

  def __init__(self, source, keys, chunk: int = 1024):
    self._name = repr(source)
    columns = {k: [] for k in keys}
    for start in range(0, len(source), chunk):
      for example in source.__getitems__(range(start, min(start + chunk, len(source)))):
        for k in keys:
          columns[k].append(example[k])
    self._arrays = {k: np.stack(v) for k, v in columns.items()}  # (N, ...) per feature

  def __len__(self) -> int:
    return len(next(iter(self._arrays.values())))

  def __getitem__(self, index: int) -> dict:
    return {k: v[index] for k, v in self._arrays.items()}

  def __repr__(self) -> str:  # Stable across runs: grain stores it in the iterator state.
    return f"InMemorySource({self._name})"
