"""grain input pipelines over TFDS data sources, feeding global `jax.Array` batches.

Training reads one global stream, the same on any topology: the records shuffled with the seed
(a new order every epoch), per-record random augmentation drawn from the record's global
position. Global batch `s` is positions `[s * B, (s + 1) * B)` of that stream, and process `p` of
`P` reads the contiguous block `[s * B + p * B / P, s * B + (p + 1) * B / P)` of it: the rows that
`jax.make_array_from_process_local_data` places on its devices, so the assembled global array is
row for row the single-process batch, and per-row randomness (dropout) lands on the same
examples on any number of processes. The data position is therefore a function of the step
alone: a run resumed at step `s` (on any number of processes or devices, with any number of
workers) starts at batch `s`, and checkpoints need no iterator state.

Evaluation: one pass in order, each global batch split into the same contiguous blocks; the last
batch is padded and carries `weight` 0 on the padding, so metrics are exact and every device
always sees the same batch shape (no recompilation).
"""

from collections.abc import Callable, Mapping
import dataclasses
import math
from typing import Any, Iterator

from absl import flags
import grain
import jax
import numpy as np

from vision_jax import errors
from vision_jax.data import auto_augment, random_erasing, transforms

_KEYS = ("image", "label")  # Classification; other tasks pass their own.
_PEEK = 8  # Examples checked when a pipeline is built (kinds, equal shapes).
ExampleFn = Callable[[dict], dict]


@dataclasses.dataclass(frozen=True)
class InputOptions:
  """How examples become batches: the fields of `config.input`, plain values.

  The defaults are `vision_jax.config.base_config().input`'s (a test keeps them equal); see
  there what each field means. `train_crop`: "pad" (pad by `crop_padding` + random crop),
  "random_resized" (Inception crop of area `crop_scale` and aspect `crop_ratio`, resized to
  `image_size`) or "random_scale" (zoom by a factor in `scale_range`, then an `image_size` crop).
  Evaluation (and "pad" training) resizes the shorter side to `image_size / center_crop_fraction`
  and takes the centre crop; `image_size` None keeps the dataset's size. `auto_augment`: ""
  (off), "randaugment" (`randaugment_num_ops` ops at bin `randaugment_magnitude` of 0..30) or
  "trivialaugment" (see `auto_augment`); `random_erasing`: its probability (see
  `random_erasing`).
  """
  batch_size: int = 128  # Global: split over all processes.
  eval_batch_size: int = 256
  image_size: int | None = None
  train_crop: str = "pad"
  crop_padding: int = 4
  crop_scale: tuple[float, float] = (0.08, 1.0)
  crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
  scale_range: tuple[float, float] = (0.5, 2.0)
  center_crop_fraction: float = 1.0
  random_flip: bool = True
  auto_augment: str = ""
  randaugment_num_ops: int = 2
  randaugment_magnitude: int = 9
  random_erasing: float = 0.0
  mean: tuple[float, ...] = (0.5,)
  std: tuple[float, ...] = (0.25,)
  num_workers: int = 0  # grain worker processes; 0 reads in the main process.
  prefetch: int = 2  # Batches read ahead by grain's threads.

  @classmethod
  def from_config(cls, section: Mapping[str, Any]) -> "InputOptions":
    """From the `input` section of an experiment config (every field, no others)."""
    return cls(**{k: tuple(v) if isinstance(v, (list, tuple)) else v
                  for k, v in section.items()})


def _center_crop(options: InputOptions, ds: grain.MapDataset,
                 kinds: dict[str, str]) -> grain.MapDataset:
  if options.image_size is None:
    return ds
  return ds.map(transforms.MapFn(transforms.resize_and_center_crop,
                                 {"size": options.image_size,
                                  "crop_fraction": options.center_crop_fraction,
                                  "kinds": kinds}))


def _normalize(options: InputOptions) -> transforms.MapFn:
  mean = np.asarray(options.mean, np.float32)
  std = np.asarray(options.std, np.float32)
  return transforms.MapFn(transforms.normalize, {"mean": mean, "std": std})


def _this_process(blocks: grain.MapDataset, start: int = 0) -> grain.MapDataset:
  """Blocks `start + p, start + p + P, ...` of `blocks` for process `p` of `P`.

  `blocks` holds consecutive `B / P`-row pieces of the stream, so global batch `s` is blocks
  `[s * P, (s + 1) * P)` and this process holds block `p` of each: its contiguous rows.
  """
  return blocks[start * jax.process_count() + jax.process_index()::jax.process_count()]


def _iterate(options: InputOptions, ds: grain.MapDataset) -> Iterator[dict]:
  """Reads ahead with threads, and with worker processes when `options.num_workers` > 0.

  Each element is a whole batch, so workers produce the same batches as the main process.
  """
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(1, options.prefetch),
                                            prefetch_buffer_size=max(1, options.prefetch)))
  if options.num_workers:
    if not flags.FLAGS.is_parsed():
      # grain's worker processes read absl flags; outside `app.run` (notebooks, tests, imports
      # into other programs) nothing has parsed them, so take their defaults.
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=options.num_workers))
  return iter(it)


def local_batch_size(global_batch_size: int) -> int:
  """This process's share of a global batch."""
  return global_batch_size // jax.process_count()


def _select(ds: grain.MapDataset, keys: tuple[str, ...],
            example_fn: ExampleFn | None) -> grain.MapDataset:
  ds = ds.map(transforms.MapFn(transforms.select, {"keys": keys}))
  return ds if example_fn is None else ds.map(transforms.MapFn(example_fn))


# --- Checks: a feature the pipeline cannot batch is an error naming it, before grain runs. ----


def _kinds(kinds: transforms.FeatureKinds) -> dict[str, str]:
  transforms.check_kinds(kinds)
  return dict(kinds)  # A plain dict: grain's worker processes pickle it.


def check_augmentation(options: InputOptions, kinds: transforms.FeatureKinds) -> None:
  """Refuses augmentation settings that are invalid or that a feature cannot follow (boxes
  under `auto_augment`; masks, boxes and points under `random_erasing`), naming the feature,
  its kind and the option. `config.validate` calls it with the task's `feature_kinds`."""
  auto_augment.check(options.auto_augment, options.randaugment_num_ops,
                     options.randaugment_magnitude, kinds)
  random_erasing.check(options.random_erasing, kinds)


def _shapes(value, path: str) -> Iterator[tuple[str, tuple[int, ...]]]:
  """(path, shape) of every array in a (nested dict) feature, e.g. ("objects/bbox", (3, 4))."""
  if isinstance(value, Mapping):
    for key, item in value.items():
      yield from _shapes(item, f"{path}/{key}")
  else:
    yield path, np.shape(value)


def _ragged(path: str, shapes: list, kind: str | None) -> errors.UserError:
  fix = ("set the input `image_size` (config.input.image_size) so that every example is resized "
         "to one size" if kind in ("image", "mask") else
         "pad it to one shape in the task's `example_transform` (the pipeline's `example_fn`), "
         "as detection pads its boxes to `max_boxes` rows")
  return errors.UserError(f"Feature {path!r} has different shapes across examples ({shapes}), "
                          f"so examples cannot be stacked into batches; {fix}.")


def _check_examples(examples: list[dict], kinds: dict[str, str]) -> None:
  """Every feature has a kind, and one shape in every example (else a `UserError` naming it)."""
  if not examples:
    return
  for key in examples[0]:
    if key not in kinds:
      raise transforms.undeclared(key)
  shapes = {}
  for example in examples:
    for key, value in example.items():
      for path, shape in _shapes(value, key):
        shapes.setdefault(path, []).append(shape)
  for path, seen in shapes.items():
    if len(set(seen)) > 1:
      raise _ragged(path, seen, kinds.get(path))


def _stack(examples: list[dict]) -> dict:
  """grain's batching (`np.stack` of every array), with a ragged feature named in the error."""
  out = {}
  for key in examples[0]:
    try:
      out[key] = jax.tree.map(lambda *xs: np.stack(xs), *[e[key] for e in examples])
    except ValueError as error:
      seen = [[shape for _, shape in _shapes(e[key], key)] for e in examples]
      raise _ragged(key, seen, None) from error
  return out


def _peek(ds: grain.MapDataset, num: int) -> list[dict]:
  """The first `num` examples of `ds` (grain maps, random ones too, are functions of the
  position: reading them here changes nothing later)."""
  return [ds[i] for i in range(min(num, _PEEK))]


# --- Training ------------------------------------------------------------------------------------


def train_stream(source, options: InputOptions, seed: int, keys: tuple[str, ...] = _KEYS,
                 kinds: transforms.FeatureKinds = transforms.DEFAULT_KINDS,
                 example_fn: ExampleFn | None = None) -> grain.MapDataset:
  """The global, endless, shuffled and augmented stream of single examples (all processes).

  Args:
    source: a random-access data source (e.g. from `datasets.open_split`).
    options: the input settings.
    seed: shuffling and augmentation seed.
    keys: the features to keep (the task's).
    kinds: feature → kind (`transforms.KINDS`) of every feature after `example_fn`: how the
      geometric augmentation moves it (the task's `feature_kinds`).
    example_fn: the task's per-example preprocessing, after selecting `keys`.

  Raises:
    errors.UserError: for a feature without a kind or with different shapes in the first
      examples (checked here, before grain reads anything else), or one that the augmentation
      cannot move (`check_augmentation`).
  """
  kinds = _kinds(kinds)
  check_augmentation(options, kinds)
  ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat()
  ds = _select(ds, keys, example_fn)
  if options.train_crop == "random_resized":
    ds = ds.random_map(transforms.RandomMapFn(
        transforms.random_resized_crop,
        {"size": options.image_size, "scale": tuple(options.crop_scale),
         "ratio": tuple(options.crop_ratio), "kinds": kinds}), seed=seed)
  elif options.train_crop == "random_scale":
    ds = ds.random_map(transforms.RandomMapFn(
        transforms.random_scale_crop,
        {"size": options.image_size, "scale_range": tuple(options.scale_range),
         "kinds": kinds}), seed=seed)
  else:
    ds = _center_crop(options, ds, kinds)
  peeked = _peek(ds, len(source))
  _check_examples(peeked, kinds)  # The crops name a feature without a kind.
  # Each random step has its own seed (grain derives each record's generator from (seed,
  # position) alone), so turning one on leaves the others' draws as they were.
  if options.auto_augment:  # After the crop; "pad" crops (at most the padding) per batch later.
    for example in peeked:
      auto_augment.check_images(example, kinds)
    ds = ds.random_map(transforms.RandomMapFn(
        auto_augment.augment, {"policy": options.auto_augment,
                               "num_ops": options.randaugment_num_ops,
                               "magnitude": options.randaugment_magnitude, "kinds": kinds}),
        seed=seed + 2)
  if options.random_erasing:  # Drawn here, applied per batch after normalisation.
    ds = ds.random_map(transforms.RandomMapFn(
        random_erasing.sample, {"probability": options.random_erasing, "kinds": kinds}),
        seed=seed + 3)
  padding = options.crop_padding if options.train_crop == "pad" else 0
  return ds.random_map(transforms.RandomMapFn(
      transforms.sample_crop_and_flip, {"padding": padding, "flip": options.random_flip}),
      seed=seed + 1)


def train_batches(source, options: InputOptions, seed: int, start_step: int = 0,
                  keys: tuple[str, ...] = _KEYS,
                  kinds: transforms.FeatureKinds = transforms.DEFAULT_KINDS,
                  example_fn: ExampleFn | None = None) -> Iterator[dict]:
  """This process's share of every global training batch from step `start_step` on.

  Args:
    source: a random-access data source (e.g. from `datasets.open_split`).
    options: the input settings.
    seed: shuffling and augmentation seed.
    start_step: the first global batch to yield (the step a run resumes at).
    keys: the features to keep (the task's).
    kinds: feature → kind of every feature after `example_fn` (see `train_stream`).
    example_fn: the task's per-example preprocessing, after selecting `keys`.

  Returns:
    An endless iterator of numpy batches: `image` (B / P, H, W, C) float32, `label` (B / P,)
    (or the task's other features).

  Raises:
    errors.UserError: as `train_stream`.
  """
  kinds = _kinds(kinds)
  padding = options.crop_padding if options.train_crop == "pad" else 0
  # Augmentation is drawn on the global stream, before a process picks its blocks.
  blocks = train_stream(source, options, seed, keys, kinds, example_fn).batch(
      local_batch_size(options.batch_size), drop_remainder=True, batch_fn=_stack)
  ds = _this_process(blocks, start_step)
  erasing = bool(options.random_erasing)
  ds = ds.map(transforms.MapFn(transforms.apply_crop_and_flip, {
      "padding": padding, "kinds": {**kinds, **random_erasing.KINDS} if erasing else kinds}))
  ds = ds.map(_normalize(options))
  if erasing:
    ds = ds.map(transforms.MapFn(random_erasing.apply))
  return _iterate(options, ds)


# --- Evaluation ----------------------------------------------------------------------------------


def _pad(batch: dict, size: int) -> dict:
  """Pads every array to `size` rows and adds `weight` (1 real, 0 padding)."""
  n = len(batch["image"])
  out = {k: np.concatenate([v, np.zeros((size - n,) + v.shape[1:], v.dtype)])
         for k, v in batch.items()}
  out["weight"] = (np.arange(size) < n).astype(np.float32)
  return out


def eval_batches(source, options: InputOptions, keys: tuple[str, ...] = _KEYS,
                 kinds: transforms.FeatureKinds = transforms.DEFAULT_KINDS,
                 example_fn: ExampleFn | None = None, shard: bool = True) -> Iterator[dict]:
  """One ordered pass over this process's share in padded batches with a `weight` field.

  Global eval batch `k` is examples `[k * E, (k + 1) * E)`, process `p` holding its block
  `[k * E + p * E / P, k * E + (p + 1) * E / P)` (padded), so the assembled batches equal the
  single-process ones. Every process yields the same number of batches, padding with empty
  batches where its share is shorter, so collective eval steps never wait forever.

  Args:
    source: the eval split.
    options: the input settings.
    keys: the features to keep (the task's).
    kinds: feature → kind of every feature after `example_fn` (see `train_stream`).
    example_fn: the task's per-example preprocessing, after selecting `keys`.
    shard: False gives every process the whole split, in order, in global-size batches.

  Raises:
    errors.UserError: as `train_stream`, when called (not at the first batch).
  """
  kinds = _kinds(kinds)
  processes = jax.process_count() if shard else 1
  size = options.eval_batch_size // processes
  ds = _center_crop(options, _select(grain.MapDataset.source(source), keys, example_fn), kinds)
  _check_examples(_peek(ds, len(source)), kinds)
  blocks = ds.batch(size, batch_fn=_stack).map(_normalize(options))  # The last may be short.
  return _eval_iterator(options, source, blocks, size, processes, shard)


def _eval_iterator(options: InputOptions, source, blocks: grain.MapDataset, size: int,
                   processes: int, shard: bool) -> Iterator[dict]:
  num_batches = math.ceil(len(source) / (size * processes))
  template = None
  for batch in _iterate(options, _this_process(blocks) if shard else blocks):
    template = batch
    num_batches -= 1
    yield _pad(batch, size)
  for _ in range(num_batches):  # Only where this process's share is shorter.
    template = blocks[0] if template is None else template
    yield _pad({k: v[:0] for k, v in template.items()}, size)


def eval_examples(source, options: InputOptions, num: int, keys: tuple[str, ...] = _KEYS,
                  kinds: transforms.FeatureKinds = transforms.DEFAULT_KINDS) -> tuple[dict, dict]:
  """The first `num` examples of an eval split, preprocessed as evaluation does (for pictures).

  Returns:
    `(raw, batch)`: the same examples stacked, with uint8 images in `raw` and normalised
    float32 images in `batch`.
  """
  kinds = _kinds(kinds)
  examples = [transforms.select(source[i], keys) for i in range(min(num, len(source)))]
  _check_examples(examples[:1], kinds)
  if options.image_size is not None:
    examples = [transforms.resize_and_center_crop(e, options.image_size,
                                                  options.center_crop_fraction, kinds)
                for e in examples]
  raw = _stack(examples)
  return raw, _normalize(options).map(raw)
