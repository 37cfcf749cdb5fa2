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

import math
from typing import Iterator

from absl import flags
import grain
import jax
import ml_collections
import numpy as np

from vision_jax.data import transforms

_KEYS = ("image", "label")  # Classification; other tasks pass their own.


def _center_crop(config: ml_collections.ConfigDict, ds: grain.MapDataset) -> grain.MapDataset:
  if config.image_size is None:
    return ds
  return ds.map(transforms.MapFn(transforms.resize_and_center_crop,
                                 {"size": config.image_size,
                                  "crop_fraction": config.center_crop_fraction}))


def _normalize(config: ml_collections.ConfigDict) -> transforms.MapFn:
  mean = np.asarray(config.mean, np.float32)
  std = np.asarray(config.std, np.float32)
  return transforms.MapFn(transforms.normalize, {"mean": mean, "std": std})


def _this_process(blocks: grain.MapDataset, start: int = 0) -> grain.MapDataset:
  """Blocks `start + p, start + p + P, ...` of `blocks` for process `p` of `P`.

  `blocks` holds consecutive `B / P`-row pieces of the stream, so global batch `s` is blocks
  `[s * P, (s + 1) * P)` and this process holds block `p` of each: its contiguous rows.
  """
  return blocks[start * jax.process_count() + jax.process_index()::jax.process_count()]


def _iterate(config: ml_collections.ConfigDict, ds: grain.MapDataset) -> Iterator[dict]:
  """Reads ahead with threads, and with worker processes when `config.num_workers` > 0.

  Each element is a whole batch, so workers produce the same batches as the main process.
  """
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(1, config.prefetch),
                                            prefetch_buffer_size=max(1, config.prefetch)))
  if config.num_workers:
    if not flags.FLAGS.is_parsed():
      # grain's worker processes read absl flags; outside `app.run` (notebooks, tests, imports
      # into other programs) nothing has parsed them, so take their defaults.
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.num_workers))
  return iter(it)


def local_batch_size(global_batch_size: int) -> int:
  """This process's share of a global batch."""
  return global_batch_size // jax.process_count()


def _identity(example: dict) -> dict:
  return example


def _select(ds: grain.MapDataset, keys: tuple[str, ...], example_fn) -> grain.MapDataset:
  ds = ds.map(transforms.MapFn(transforms.select, {"keys": keys}))
  return ds if example_fn is _identity else ds.map(transforms.MapFn(example_fn))


def train_stream(config: ml_collections.ConfigDict, source, seed: int,
                 keys: tuple[str, ...] = _KEYS, example_fn=_identity) -> grain.MapDataset:
  """The global, endless, shuffled and augmented stream of single examples (all processes).

  Args:
    config: the `input` config section.
    source: a random-access data source (e.g. from `datasets.open_split`).
    seed: shuffling and augmentation seed.
    keys: the features to keep (the task's).
    example_fn: the task's per-example preprocessing, after selecting `keys`.
  """
  ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat()
  ds = _select(ds, keys, example_fn)
  if config.train_crop == "random_resized":
    ds = ds.random_map(transforms.RandomMapFn(
        transforms.random_resized_crop,
        {"size": config.image_size, "scale": tuple(config.crop_scale),
         "ratio": tuple(config.crop_ratio)}), seed=seed)
  elif config.train_crop == "random_scale":
    ds = ds.random_map(transforms.RandomMapFn(
        transforms.random_scale_crop,
        {"size": config.image_size, "scale_range": tuple(config.scale_range)}), seed=seed)
  else:
    ds = _center_crop(config, ds)
  padding = config.crop_padding if config.train_crop == "pad" else 0
  # A second seed: grain derives each record's generator from (seed, position) alone.
  return ds.random_map(transforms.RandomMapFn(
      transforms.sample_crop_and_flip, {"padding": padding, "flip": config.random_flip}),
      seed=seed + 1)


def train_batches(config: ml_collections.ConfigDict, source, seed: int, start_step: int = 0,
                  keys: tuple[str, ...] = _KEYS, example_fn=_identity) -> Iterator[dict]:
  """This process's share of every global training batch from step `start_step` on.

  Args:
    config: the `input` config section.
    source: a random-access data source (e.g. from `datasets.open_split`).
    seed: shuffling and augmentation seed.
    start_step: the first global batch to yield (the step a run resumes at).
    keys: the features to keep (the task's).
    example_fn: the task's per-example preprocessing, after selecting `keys`.

  Returns:
    An endless iterator of numpy batches: `image` (B / P, H, W, C) float32, `label` (B / P,)
    (or the task's other `keys`).
  """
  padding = config.crop_padding if config.train_crop == "pad" else 0
  # Augmentation is drawn on the global stream, before a process picks its blocks.
  blocks = train_stream(config, source, seed, keys, example_fn).batch(
      local_batch_size(config.batch_size), drop_remainder=True)
  ds = _this_process(blocks, start_step)
  ds = ds.map(transforms.MapFn(transforms.apply_crop_and_flip, {"padding": padding}))
  return _iterate(config, ds.map(_normalize(config)))


def _pad(batch: dict, size: int) -> dict:
  """Pads every array to `size` rows and adds `weight` (1 real, 0 padding)."""
  n = len(batch["image"])
  out = {k: np.concatenate([v, np.zeros((size - n,) + v.shape[1:], v.dtype)])
         for k, v in batch.items()}
  out["weight"] = (np.arange(size) < n).astype(np.float32)
  return out


def eval_batches(config: ml_collections.ConfigDict, source, keys: tuple[str, ...] = _KEYS,
                 example_fn=_identity, shard: bool = True) -> Iterator[dict]:
  """One ordered pass over this process's share in padded batches with a `weight` field.

  Global eval batch `k` is examples `[k * E, (k + 1) * E)`, process `p` holding its block
  `[k * E + p * E / P, k * E + (p + 1) * E / P)` (padded), so the assembled batches equal the
  single-process ones. Every process yields the same number of batches, padding with empty
  batches where its share is shorter, so collective eval steps never wait forever.

  Args:
    config: the `input` config section.
    source: the eval split.
    keys: the features to keep (the task's).
    example_fn: the task's per-example preprocessing, after selecting `keys`.
    shard: False gives every process the whole split, in order, in global-size batches.
  """
  processes = jax.process_count() if shard else 1
  size = config.eval_batch_size // processes
  ds = _center_crop(config, _select(grain.MapDataset.source(source), keys, example_fn))
  blocks = ds.batch(size).map(_normalize(config))  # The last block may be short.
  num_batches = math.ceil(len(source) / (size * processes))
  template = None
  for batch in _iterate(config, _this_process(blocks) if shard else blocks):
    template = batch
    num_batches -= 1
    yield _pad(batch, size)
  for _ in range(num_batches):  # Only where this process's share is shorter.
    template = blocks[0] if template is None else template
    yield _pad({k: v[:0] for k, v in template.items()}, size)


def eval_examples(config: ml_collections.ConfigDict, source, num: int,
                  keys: tuple[str, ...] = _KEYS) -> tuple[dict, dict]:
  """The first `num` examples of an eval split, preprocessed as evaluation does (for pictures).

  Returns:
    `(raw, batch)`: the same examples stacked, with uint8 images in `raw` and normalised
    float32 images in `batch`.
  """
  examples = [transforms.select(source[i], keys) for i in range(min(num, len(source)))]
  if config.image_size is not None:
    examples = [transforms.resize_and_center_crop(e, config.image_size,
                                                  config.center_crop_fraction)
                for e in examples]
  raw = {k: np.stack([e[k] for e in examples]) for k in keys}
  return raw, _normalize(config).map(raw)
