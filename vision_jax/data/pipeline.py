"""grain input pipelines over TFDS data sources, feeding global `jax.Array` batches.

Training: each JAX process reads its own shard, shuffled with a seed (a new order every epoch),
augmented with per-record seeded randomness, batched to `batch_size / process_count`, read ahead
by grain's threads (and worker processes if asked). The iterator's state is a small JSON blob
that goes into every checkpoint, so a resumed run continues at the exact same example.

Evaluation: one pass in order; the last batch is padded and carries `weight` 0 on the padding,
so metrics are exact and every device always sees the same batch shape (no recompilation).
"""

import math
from typing import Iterator

from absl import flags
import grain
import jax
import ml_collections
import numpy as np

from vision_jax.data import transforms

_KEYS = ("image", "label")


def _normalize_op(config: ml_collections.ConfigDict) -> transforms.MapFn:
  mean = np.asarray(config.mean, np.float32)
  std = np.asarray(config.std, np.float32)
  return transforms.MapFn(transforms.normalize, {"mean": mean, "std": std})


def _select_op() -> transforms.MapFn:
  return transforms.MapFn(transforms.select, {"keys": _KEYS})


def _center_crop_ops(config: ml_collections.ConfigDict) -> list:
  if config.image_size is None:
    return []
  return [transforms.MapFn(transforms.resize_and_center_crop,
                           {"size": config.image_size,
                            "crop_fraction": config.center_crop_fraction})]


def train_operations(config: ml_collections.ConfigDict, batch_size: int) -> list:
  """grain operations for training, from the `input` config section, batching included.

  Per example: select, then the random-resized crop or a resize. Per batch (vectorised, seeded
  per batch): pad-and-crop, flip, normalise.
  """
  ops = [_select_op()]
  if config.train_crop == "random_resized":
    ops.append(transforms.RandomMapFn(
        transforms.random_resized_crop,
        {"size": config.image_size, "scale": tuple(config.crop_scale),
         "ratio": tuple(config.crop_ratio)}))
  else:
    ops.extend(_center_crop_ops(config))
  ops.append(grain.transforms.Batch(batch_size, drop_remainder=True))
  if config.train_crop == "pad" and config.crop_padding:
    ops.append(transforms.RandomMapFn(transforms.pad_and_random_crop,
                                      {"padding": config.crop_padding}))
  if config.random_flip:
    ops.append(transforms.RandomMapFn(transforms.random_flip))
  return ops + [_normalize_op(config)]


def eval_operations(config: ml_collections.ConfigDict, batch_size: int) -> list:
  """grain operations for evaluation: resize and centre crop, no augmentation.

  The last batch may be short (`eval_batches` pads it).
  """
  return [_select_op(), *_center_crop_ops(config), grain.transforms.Batch(batch_size),
          _normalize_op(config)]


def _loader(source, sampler, operations, config, shard) -> grain.DataLoader:
  if config.num_workers and not flags.FLAGS.is_parsed():
    # grain's worker processes read absl flags; outside `app.run` (notebooks, tests, imports
    # into other programs) nothing has parsed them, so take their defaults.
    flags.FLAGS.mark_as_parsed()
  return grain.DataLoader(
      data_source=source, sampler=sampler, operations=operations,
      worker_count=config.num_workers, shard_options=shard,
      read_options=grain.ReadOptions(num_threads=max(1, config.prefetch),
                                     prefetch_buffer_size=max(1, config.prefetch)))


def local_batch_size(global_batch_size: int) -> int:
  """This process's share of a global batch."""
  return global_batch_size // jax.process_count()


def train_loader(config: ml_collections.ConfigDict, source, seed: int) -> grain.DataLoader:
  """An endless, shuffled, augmented, batched loader of this process's shard.

  Args:
    config: the `input` config section.
    source: a random-access data source (e.g. from `datasets.open_split`).
    seed: shuffling and augmentation seed.

  Returns:
    A `grain.DataLoader`; `iter()` of it has `get_state()` / `set_state()`.
  """
  shard = grain.sharding.ShardByJaxProcess(drop_remainder=True)
  sampler = grain.samplers.IndexSampler(
      num_records=len(source), shard_options=shard, shuffle=True, num_epochs=None, seed=seed)
  return _loader(source, sampler, train_operations(config, local_batch_size(config.batch_size)),
                 config, shard)


def _pad(batch: dict, size: int) -> dict:
  """Pads every array to `size` rows and adds `weight` (1 real, 0 padding)."""
  n = len(batch["label"])
  out = {k: np.concatenate([v, np.zeros((size - n,) + v.shape[1:], v.dtype)])
         for k, v in batch.items()}
  out["weight"] = (np.arange(size) < n).astype(np.float32)
  return out


def eval_batches(config: ml_collections.ConfigDict, source) -> Iterator[dict]:
  """One ordered pass over this process's shard in padded batches with a `weight` field.

  Every process yields the same number of batches (the largest shard's count), padding with
  empty batches where its shard is shorter, so collective eval steps never wait forever.
  """
  size = local_batch_size(config.eval_batch_size)
  shard = grain.sharding.ShardByJaxProcess(drop_remainder=False)
  sampler = grain.samplers.IndexSampler(
      num_records=len(source), shard_options=shard, shuffle=False, num_epochs=1)
  loader = _loader(source, sampler, eval_operations(config, size), config, shard)
  num_batches = math.ceil(math.ceil(len(source) / jax.process_count()) / size)
  template = None
  for batch in loader:
    template = batch
    num_batches -= 1
    yield _pad(batch, size)
  for _ in range(num_batches):  # Only where this process's shard is shorter.
    yield _pad({k: v[:0] for k, v in template.items()}, size)


def to_global(batch: dict, sharding: jax.sharding.Sharding) -> dict:
  """Assembles each process's local numpy batch into one global array per key."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
